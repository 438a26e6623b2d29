"""Celery tasks of the inference lane: one task per image, the model batched behind them.

Each task claims its job row (a guarded UPDATE: a redelivered message for a finished job does
nothing), judges the image through the runtime, and records exactly one outcome. Permanent errors
fail the job at once with their code; transient ones put it back with backoff until
``DFSCAN_MAX_ATTEMPTS``; a database outage retries the message and leaves the row for the sweeper.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import jobs
from dfscan.exceptions import BadMessageError, DfscanError
from dfscan.queueing import SCAN_TASK
from producer.outbox import send_jobs
from worker.app import app, runtime
from worker.messages import JobMessage, SourcesMessage, job_id_of, parse_scan_message
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)
T = TypeVar("T")

# A database outage is retried this many times (backoff capped at 30 s: ~10 minutes), then the
# message is dropped and the sweeper re-sends the job from its row once the database is back.
DB_RETRIES = 20


def backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2)


@app.task(name=SCAN_TASK, bind=True, max_retries=None)
def scan(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    rt = runtime()
    try:
        message = parse_scan_message(args, kwargs)
    except BadMessageError as exc:
        job_id = job_id_of(kwargs)
        log.warning("rejected message %s: %s", self.request.id, exc, extra={"job_id": str(job_id)})
        code, text = exc.code, exc.message
        if job_id is not None:
            _with_db(self, rt, lambda s: jobs.finish_failed(s, job_id, code=code, message=text))
        return {"status": "rejected", "error_code": code, "error": text}
    if isinstance(message, SourcesMessage):
        return _fan_out(self, rt, message)
    assert isinstance(message, JobMessage)
    return _process(self, rt, message.job_id)


def _db_retry(task: Task, exc: SQLAlchemyError) -> Exception:
    """Retry the message with backoff because the database is unavailable."""
    retries = task.request.retries
    log.warning("database unavailable (retry %d of %d): %s", retries + 1, DB_RETRIES, exc)
    return task.retry(exc=exc, countdown=backoff(retries + 1), max_retries=DB_RETRIES)


def _db_call(task: Task, call: Callable[[], T]) -> T:
    """Run a database call; an outage retries the message with backoff."""
    try:
        return call()
    except SQLAlchemyError as exc:
        raise _db_retry(task, exc) from exc


def _with_db(task: Task, rt: WorkerRuntime, work: Callable[[Session], T]) -> T:
    """Run ``work(session)`` in a transaction of its own; an outage retries the message with backoff."""

    def run() -> T:
        with rt.sessions.begin() as session:
            return work(session)

    return _db_call(task, run)


def _fan_out(task: Task, rt: WorkerRuntime, message: SourcesMessage) -> dict[str, Any]:
    """A foreign client sent sources: write their job rows (idempotent on the message id), then send."""

    def create(session: Any) -> tuple[uuid.UUID, list[tuple[uuid.UUID, int]]]:
        submission, new_jobs, _ = jobs.create_submission(
            session,
            list(message.sources),
            client_ref=message.client_ref,
            priority=message.priority,
            idempotency_key=f"celery-task:{task.request.id}",
        )
        return submission.id, [(job.id, job.priority) for job in new_jobs if job.enqueued_at is None]

    submission_id, unsent = _with_db(task, rt, create)
    sent = send_jobs(task.app, rt.sessions, unsent)
    log.info("foreign message %s became submission %s (%d jobs)", task.request.id, submission_id, sent)
    return {"status": "accepted", "submission_id": str(submission_id), "jobs": len(unsent)}


def _process(task: Task, rt: WorkerRuntime, job_id: uuid.UUID) -> dict[str, Any]:
    settings = rt.settings
    claimed = _db_call(task, lambda: rt.claim(job_id))
    if claimed is None:
        return {"status": "skipped", "job_id": str(job_id)}
    source, attempts = claimed
    extra = {"job_id": str(job_id), "attempt": attempts}
    try:
        judgement = rt.judge(source)
    except SQLAlchemyError as exc:  # the duplicate-cache look-up: the database is down
        raise _db_retry(task, exc) from exc
    except DfscanError as exc:
        code, text = exc.code, exc.message
        if exc.permanent or attempts >= settings.max_attempts:
            _with_db(task, rt, lambda s: jobs.finish_failed(s, job_id, code=code, message=text))
            log.info("job failed %s: %s", code, text, extra=extra)
            return {"status": "failed", "job_id": str(job_id), "error_code": code}
        _with_db(task, rt, lambda s: jobs.release_job(s, job_id))
        log.info("job will retry after %s: %s", exc.code, exc.message, extra=extra)
        raise task.retry(exc=exc, countdown=backoff(attempts)) from exc
    except Exception as exc:  # a bug, not an input problem: retry, then fail with the message kept
        log.exception("unexpected error judging %s", source, extra=extra)
        if attempts >= settings.max_attempts:
            text = f"unexpected error: {exc!r}"
            _with_db(task, rt, lambda s: jobs.finish_failed(s, job_id, code="INTERNAL_ERROR", message=text))
            return {"status": "failed", "job_id": str(job_id), "error_code": "INTERNAL_ERROR"}
        _with_db(task, rt, lambda s: jobs.release_job(s, job_id))
        raise task.retry(exc=exc, countdown=backoff(attempts)) from exc
    recorded = _db_call(task, lambda: rt.finish(job_id, judgement))
    return {
        "status": "done" if recorded else "skipped",
        "job_id": str(job_id),
        "label": judgement.label,
        "fake_score": round(judgement.fake_score, 6),
        "model_version": judgement.model_version,
    }
