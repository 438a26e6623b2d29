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
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from dfscan.queueing import (
    FAIR_SATURATED,
    INFERENCE_QUEUE,
    INTERACTIVE_QUEUE,
    SCAN_TASK,
    fair_level,
    queue_for_priority,
    queue_lists,
)

log = logging.getLogger(__name__)

_SEND_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def send_chunk(
    app: Celery,
    job_ids: Sequence[uuid.UUID],
    queue: str,
    *,
    countdown: float | None = None,
    level: int = 0,
) -> None:
    """Publish one ``dfscan.scan`` message for ``job_ids`` at priority step ``level``.

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
        priority=level,
        retry=True,
        retry_policy=_SEND_RETRY,
    )


def send_job(
    app: Celery, job_id: uuid.UUID, priority: int, *, countdown: float | None = None, level: int = 0
) -> None:
    """Publish the message of one job (its Celery task id is the job id); ``level``: its fair-share
    step on the bulk lane (the interactive lane always sends step 0)."""
    queue = queue_for_priority(priority)
    send_chunk(app, [job_id], queue, countdown=countdown, level=level if queue == INFERENCE_QUEUE else 0)


def fair_chunks(
    ids: Sequence[uuid.UUID],
    tenant_of: dict[uuid.UUID, uuid.UUID],
    outstanding: dict[uuid.UUID, int],
    size: int,
) -> list[tuple[int, list[uuid.UUID]]]:
    """Bulk-lane messages as (priority step, job ids): each message holds one tenant's jobs, and its
    step is :func:`fair_level` of the tenant's jobs outstanding ahead of its first job.

    The jobs being sent are the tenant's newest outstanding ones (their rows are already written), so
    the i-th of them has ``outstanding - n + i`` ahead of it; a job with no row is sent at step 0.
    """
    by_tenant: dict[uuid.UUID | None, list[uuid.UUID]] = {}
    for job_id in ids:
        by_tenant.setdefault(tenant_of.get(job_id), []).append(job_id)
    out: list[tuple[int, list[uuid.UUID]]] = []
    for tenant_id, tenant_ids in by_tenant.items():
        before = 0 if tenant_id is None else max(0, outstanding.get(tenant_id, 0) - len(tenant_ids))
        for start in range(0, len(tenant_ids), size):
            out.append((fair_level(before + start), tenant_ids[start : start + size]))
    return out


def backlog_levels(
    sessions: sessionmaker[Session], job_ids: Sequence[uuid.UUID]
) -> tuple[dict[uuid.UUID, uuid.UUID], dict[uuid.UUID, int]]:
    """The tenant of each job and each tenant's backlog, as :func:`fair_chunks` reads them; empty (every
    message at step 0) when the database cannot answer: a message sent unfairly beats one not sent."""
    try:
        with sessions() as session:
            return jobs.tenant_backlogs(session, job_ids, beyond=FAIR_SATURATED)
    except SQLAlchemyError as exc:
        log.warning("tenant backlogs unreadable, sending %d jobs at step 0: %s", len(job_ids), exc)
        return {}, {}


def job_level(sessions: sessionmaker[Session], job_id: uuid.UUID) -> int:
    """The fair-share step of one job sent again (a retry): its tenant's backlog behind it."""
    tenant_of, outstanding = backlog_levels(sessions, [job_id])
    tenant_id = tenant_of.get(job_id)
    return 0 if tenant_id is None else fair_level(outstanding.get(tenant_id, 1) - 1)


def send_jobs(
    app: Celery,
    sessions: sessionmaker[Session],
    pending: Iterable[tuple[uuid.UUID, int]],
    *,
    per_message: int = 1,
    fair_share: bool = True,
) -> int:
    """Send (job id, priority) pairs, ``per_message`` jobs a message on the bulk lane (one on the
    interactive lane, where latency matters), and mark the sent ones; stop at the first broker failure.

    With ``fair_share`` (DFSCAN_FAIR_SHARE), bulk messages hold one tenant's jobs each and go out at
    their tenant's fair-share step (:func:`fair_chunks`); without it, all at step 0 in one FIFO."""
    lanes: dict[str, list[uuid.UUID]] = {}
    for job_id, priority in pending:
        lanes.setdefault(queue_for_priority(priority), []).append(job_id)
    messages: list[tuple[str, int, list[uuid.UUID]]] = []
    for queue, ids in lanes.items():
        if queue == INFERENCE_QUEUE and fair_share:
            tenant_of, outstanding = backlog_levels(sessions, ids)
            size = max(1, per_message)
            messages.extend(
                (queue, level, chunk) for level, chunk in fair_chunks(ids, tenant_of, outstanding, size)
            )
            continue
        size = 1 if queue == INTERACTIVE_QUEUE else max(1, per_message)
        messages.extend((queue, 0, ids[start : start + size]) for start in range(0, len(ids), size))
    sent: list[uuid.UUID] = []
    try:
        for queue, level, chunk in messages:
            send_chunk(app, chunk, queue, level=level)
            sent.extend(chunk)
    except (KombuOperationalError, redis.RedisError, OSError) as exc:
        log.warning("broker unavailable after %d jobs; the rest stay in the outbox: %s", len(sent), exc)
    finally:
        if sent:
            with sessions.begin() as session:
                jobs.mark_enqueued(session, sent)
    return len(sent)


def relay_unsent(
    app: Celery,
    sessions: sessionmaker[Session],
    *,
    limit: int = 500,
    per_message: int = 1,
    fair_share: bool = True,
) -> int:
    """Send up to ``limit`` jobs whose message was never sent. Returns how many were sent."""
    with sessions() as session:
        pending = [(job.id, job.priority) for job in jobs.unsent_jobs(session, limit=limit)]
    if not pending:
        return 0
    return send_jobs(app, sessions, pending, per_message=per_message, fair_share=fair_share)


def queue_depth(broker_url: str, *, include_reserved: bool = False) -> int:
    """Scan messages waiting in the inference queues (every priority step); with ``include_reserved``, plus those workers
    hold unacknowledged (kombu's ``unacked`` hash), i.e. every scan message the broker still has."""
    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in (INFERENCE_QUEUE, INTERACTIVE_QUEUE):
            for name in queue_lists(queue):
                pipe.llen(name)
        depth = sum(int(n) for n in pipe.execute())
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
        for queue in (name for lane in (INFERENCE_QUEUE, INTERACTIVE_QUEUE) for name in queue_lists(lane)):
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
