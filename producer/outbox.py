"""Send job messages for rows that are written but not yet sent (a transactional outbox).

A job row is committed *before* its message is sent. If sending fails (Redis down, process killed
between the two), the row keeps ``enqueued_at = NULL`` and is sent later by the next submit or by
the sweeper, so no job stays queued forever.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

import redis
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from dfscan.queueing import INFERENCE_QUEUE, INTERACTIVE_QUEUE, SCAN_TASK, queue_for_priority

log = logging.getLogger(__name__)

_SEND_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def send_job(app: Celery, job_id: uuid.UUID, priority: int) -> None:
    """Publish one ``dfscan.scan`` message; the Celery task id is the job id, so Flower shows job ids."""
    app.send_task(
        SCAN_TASK,
        kwargs={"job_id": str(job_id)},
        queue=queue_for_priority(priority),
        task_id=str(job_id),
        retry=True,
        retry_policy=_SEND_RETRY,
    )


def send_jobs(app: Celery, sessions: sessionmaker[Session], pending: Iterable[tuple[uuid.UUID, int]]) -> int:
    """Send each (job id, priority) and mark the sent ones; stop at the first broker failure."""
    sent: list[uuid.UUID] = []
    try:
        for job_id, priority in pending:
            send_job(app, job_id, priority)
            sent.append(job_id)
    except (KombuOperationalError, redis.RedisError, OSError) as exc:
        log.warning("broker unavailable after %d messages; the rest stay in the outbox: %s", len(sent), exc)
    finally:
        if sent:
            with sessions.begin() as session:
                jobs.mark_enqueued(session, sent)
    return len(sent)


def relay_unsent(app: Celery, sessions: sessionmaker[Session], *, limit: int = 500) -> int:
    """Send up to ``limit`` jobs whose message was never sent. Returns how many were sent."""
    with sessions() as session:
        pending = [(job.id, job.priority) for job in jobs.unsent_jobs(session, limit=limit)]
    if not pending:
        return 0
    return send_jobs(app, sessions, pending)


def queue_depth(broker_url: str, *, include_reserved: bool = False) -> int:
    """Scan messages waiting in the inference queues; with ``include_reserved``, plus those workers
    hold unacknowledged (kombu's ``unacked`` hash), i.e. every scan message the broker still has."""
    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        depth = sum(int(client.llen(queue)) for queue in (INFERENCE_QUEUE, INTERACTIVE_QUEUE))
        return depth + (int(client.hlen("unacked")) if include_reserved else 0)
    finally:
        client.close()
