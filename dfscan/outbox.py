"""Send job messages for rows that are written but not yet sent (a transactional outbox).

A job row is committed *before* its message is sent. If sending fails (Redis down, process killed
between the two), the row keeps ``enqueued_at = NULL`` and is sent later by the next submit or by
the sweeper, so no job stays queued forever.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from dfscan.queueing import INFERENCE_QUEUE, INTERACTIVE_QUEUE, SCAN_TASK, queue_for_priority

log = logging.getLogger(__name__)

_SEND_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def send_chunk(
    app: Celery, job_ids: Sequence[uuid.UUID], queue: str, *, countdown: float | None = None
) -> None:
    """Publish one ``dfscan.scan`` message for ``job_ids``.

    A message of one job has kwargs ``{"job_id": ...}`` and the job id as its Celery task id, so
    Flower lists it under the job id; a message of several has ``{"job_ids": [...]}``.
    """
    single = len(job_ids) == 1
    app.send_task(
        SCAN_TASK,
        kwargs={"job_id": str(job_ids[0])} if single else {"job_ids": [str(job_id) for job_id in job_ids]},
        queue=queue,
        task_id=str(job_ids[0]) if single else str(uuid.uuid4()),
        countdown=countdown,
        retry=True,
        retry_policy=_SEND_RETRY,
    )


def send_job(app: Celery, job_id: uuid.UUID, priority: int, *, countdown: float | None = None) -> None:
    """Publish the message of one job (its Celery task id is the job id)."""
    send_chunk(app, [job_id], queue_for_priority(priority), countdown=countdown)


def send_jobs(
    app: Celery,
    sessions: sessionmaker[Session],
    pending: Iterable[tuple[uuid.UUID, int]],
    *,
    per_message: int = 1,
) -> int:
    """Send (job id, priority) pairs, ``per_message`` jobs a message on the bulk lane (one on the
    interactive lane, where latency matters), and mark the sent ones; stop at the first broker failure."""
    lanes: dict[str, list[uuid.UUID]] = {}
    for job_id, priority in pending:
        lanes.setdefault(queue_for_priority(priority), []).append(job_id)
    sent: list[uuid.UUID] = []
    try:
        for queue, ids in lanes.items():
            size = 1 if queue == INTERACTIVE_QUEUE else max(1, per_message)
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                send_chunk(app, chunk, queue)
                sent.extend(chunk)
    except (KombuOperationalError, redis.RedisError, OSError) as exc:
        log.warning("broker unavailable after %d jobs; the rest stay in the outbox: %s", len(sent), exc)
    finally:
        if sent:
            with sessions.begin() as session:
                jobs.mark_enqueued(session, sent)
    return len(sent)


def relay_unsent(
    app: Celery, sessions: sessionmaker[Session], *, limit: int = 500, per_message: int = 1
) -> int:
    """Send up to ``limit`` jobs whose message was never sent. Returns how many were sent."""
    with sessions() as session:
        pending = [(job.id, job.priority) for job in jobs.unsent_jobs(session, limit=limit)]
    if not pending:
        return 0
    return send_jobs(app, sessions, pending, per_message=per_message)


def queue_depth(broker_url: str, *, include_reserved: bool = False) -> int:
    """Scan messages waiting in the inference queues; with ``include_reserved``, plus those workers
    hold unacknowledged (kombu's ``unacked`` hash), i.e. every scan message the broker still has."""
    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        depth = sum(int(client.llen(queue)) for queue in (INFERENCE_QUEUE, INTERACTIVE_QUEUE))
        return depth + (int(client.hlen("unacked")) if include_reserved else 0)
    finally:
        client.close()


_PAGE = 1000


def queued_job_ids(broker_url: str) -> set[uuid.UUID]:
    """Every job id named by a scan message the broker still holds: waiting in an inference queue,
    or delivered to a worker and not yet acknowledged (kombu's ``unacked`` hash).

    Reads the messages in pages (``LRANGE``/``HSCAN``), so it costs one pass over the backlog; the
    sweeper calls it only when queued jobs are older than a lease. The queues are read before the
    hash: a message moving from one to the other in between is seen twice, not missed.
    """
    client = redis.Redis.from_url(broker_url, socket_timeout=30, socket_connect_timeout=5)
    found: set[uuid.UUID] = set()
    try:
        for queue in (INFERENCE_QUEUE, INTERACTIVE_QUEUE):
            start = 0
            while page := client.lrange(queue, start, start + _PAGE - 1):
                for raw in page:
                    found.update(_message_job_ids(raw))
                start += len(page)
        for _, raw in client.hscan_iter("unacked", count=_PAGE):
            try:
                envelope = json.loads(raw)
            except ValueError:
                continue
            if isinstance(envelope, list) and envelope:
                found.update(_message_job_ids(envelope[0]))
    finally:
        client.close()
    return found


def _message_job_ids(raw: bytes | str | dict[str, Any]) -> list[uuid.UUID]:
    """The job ids of one kombu Redis message (protocol 2, JSON body); [] for anything else."""
    try:
        message = raw if isinstance(raw, dict) else json.loads(raw)
        if message.get("headers", {}).get("task") != SCAN_TASK:
            return []
        body: Any = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, *_ = json.loads(body)
        named = [kwargs["job_id"]] if "job_id" in kwargs else list(kwargs.get("job_ids") or [])
        return [uuid.UUID(str(job_id)) for job_id in named]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []
