"""Celery tasks of the inference lane: one image per task (or a few, ``DFSCAN_JOBS_PER_MESSAGE``),
the model batched behind them.

Each task hands its message to the runtime, which claims the job rows of a batch of messages (a
guarded UPDATE: a redelivered message for a finished job does nothing), judges the images and writes
the done verdicts in one transaction; the task records exactly one outcome for every other job. Permanent
errors fail the job at once with their code; transient ones put the job back and send it again with
backoff until ``DFSCAN_MAX_ATTEMPTS``; a database outage retries the message and leaves the rows for
the sweeper.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from celery import Task
from celery.exceptions import Reject
from celery.worker.request import Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import jobs
from db.session import is_outage
from dfscan.exceptions import BadMessageError, DeviceFaultError, IdempotencyConflictError
from dfscan.outbox import job_level, send_job, send_jobs
from dfscan.queueing import INFERENCE_QUEUE, SCAN_TASK
from dfscan.urlguard import mask_url_credentials
from dfscan.verdicts import Verdict
from worker import metrics
from worker.app import app, fail_process, inference_runtime
from worker.inference import lanes
from worker.messages import JobMessage, SourcesMessage, job_ids_of, parse_scan_message
from worker.runtime import Handled, InferenceRuntime

log = logging.getLogger(__name__)
T = TypeVar("T")

# A database outage is retried this many times (backoff capped at 30 s: ~10 minutes), then the
# message is dropped and the sweeper re-sends the job from its row once the database is back.
DB_RETRIES = 20


def backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2)


def _masked(value: Any) -> Any:
    """``value`` with the credentials of every URL in its strings replaced by ``***``."""
    if isinstance(value, str):
        return mask_url_credentials(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked(item) for item in value)
    return value


class MaskedRequest(Request):
    """A task request whose arguments, as events (Flower's task page) and ``inspect active`` show them,
    carry no URL credentials: a foreign client's ``callback_url`` may hold ``user:password@``."""

    @property
    def argsrepr(self) -> str:
        return mask_url_credentials(super().argsrepr or "")

    @property
    def kwargsrepr(self) -> str:
        return mask_url_credentials(super().kwargsrepr or "")

    def info(self, safe: bool = False) -> dict[str, Any]:
        out = super().info(safe=safe)
        return {**out, "args": _masked(out["args"]), "kwargs": _masked(out["kwargs"])}


@app.task(name=SCAN_TASK, bind=True, max_retries=None, Request=MaskedRequest)
def scan(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    rt = inference_runtime()
    try:
        message = parse_scan_message(args, kwargs, callback_allowlist=rt.settings.webhook_allowlist)
    except BadMessageError as exc:
        named = job_ids_of(kwargs)
        log.warning(
            "rejected message %s: %s", self.request.id, exc, extra={"job_ids": [str(i) for i in named]}
        )
        code, text = exc.code, exc.message
        if named:  # one statement: per-job updates after record_final could deadlock with another worker
            made = _with_db(self, rt, lambda s: jobs.finish_failed_many(s, named, code=code, message=text))
            metrics.count_rejected(self, len(made))  # only the jobs this rejection made final
        return {"status": "rejected", "error_code": code, "error": text}
    if isinstance(message, SourcesMessage):
        return _fan_out(self, rt, message)
    assert isinstance(message, JobMessage)
    return _process(self, rt, message.job_ids)


def _db_retry(task: Task, exc: SQLAlchemyError) -> Exception:
    """Retry the message with backoff because the database is unavailable."""
    retries = task.request.retries
    log.warning("database unavailable (retry %d of %d): %s", retries + 1, DB_RETRIES, exc)
    return task.retry(exc=exc, countdown=backoff(retries + 1), max_retries=DB_RETRIES)


def _db_call(task: Task, call: Callable[[], T]) -> T:
    """Run a database call; an outage retries the message with backoff. A statement the database
    refuses (``DataError``, ``IntegrityError``: see ``db.session.is_outage``) is raised as it is."""
    try:
        return call()
    except SQLAlchemyError as exc:
        if not is_outage(exc):
            raise
        raise _db_retry(task, exc) from exc


def _with_db(task: Task, rt: InferenceRuntime, work: Callable[[Session], T]) -> T:
    """Run ``work(session)`` in a transaction of its own; an outage retries the message with backoff."""

    def run() -> T:
        with rt.sessions.begin() as session:
            return work(session)

    return _db_call(task, run)


def _fan_out(task: Task, rt: InferenceRuntime, message: SourcesMessage) -> dict[str, Any]:
    """A foreign client sent sources: write their job rows (idempotent on the message id), then send."""

    def create(session: Any) -> tuple[uuid.UUID, list[tuple[uuid.UUID, int]]]:
        submission, new_jobs, _ = jobs.create_submission(
            session,
            list(message.sources),
            client_ref=message.client_ref,
            priority=message.priority,
            idempotency_key=f"celery-task:{task.request.id}",
            callback_url=message.callback_url,
            callback_events=message.callback_events,
        )
        return submission.id, [(job.id, job.priority) for job in new_jobs if job.enqueued_at is None]

    try:
        submission_id, unsent = _with_db(task, rt, create)
    except IdempotencyConflictError as exc:  # the same task id sent again with other sources or callback
        log.warning("rejected message %s: %s", task.request.id, exc.message)
        return {"status": "rejected", "error_code": exc.code, "error": exc.message}
    except SQLAlchemyError as exc:  # not an outage: the database refused the message's data for good
        cause = getattr(exc, "orig", None) or exc
        first_line = (str(cause).strip().splitlines() or [""])[0][:200]
        text = f"the database refused the message's data ({type(cause).__name__}): {first_line}"
        log.warning("rejected message %s: %s", task.request.id, text)
        return {"status": "rejected", "error_code": BadMessageError.code, "error": text}
    sent = send_jobs(
        task.app,
        rt.sessions,
        unsent,
        per_message=rt.settings.jobs_per_message,
        fair_share=rt.settings.fair_share,
    )
    log.info("foreign message %s became submission %s (%d jobs)", task.request.id, submission_id, sent)
    return {"status": "accepted", "submission_id": str(submission_id), "jobs": len(unsent)}


@metrics.tracked  # jobs in flight, outcomes by lane
def _process(task: Task, rt: InferenceRuntime, job_ids: tuple[uuid.UUID, ...]) -> dict[str, Any]:
    """Hand the message's jobs to the runtime, which claims, judges and records them in a batch with the
    messages of other tasks (one claim and one verdict write for the lot); then settle here what the
    batch left to this message: failures, a database outage, a device fault."""
    if rt.broken is not None:  # the device failed for good: take nothing more, the process is ending
        raise Reject(f"this worker is stopping: {rt.broken}", requeue=True)
    handled = _db_call(task, lambda: rt.handle(job_ids, _message_lane(task)))
    if not handled.claimed:
        return {"status": "skipped", "jobs": [str(job_id) for job_id in job_ids]}
    with rt.leases.holding(handled.claimed):  # until every outcome below is stored
        _db_call(task, lambda: rt.complete(handled))  # a judgement the batch did not wait for
        return _settle(task, rt, job_ids, handled)


def _message_lane(task: Task) -> int:
    """The lane of the queue the message came from (interactive when unknown: never held back)."""
    info = getattr(task.request, "delivery_info", None) or {}
    return lanes.BULK if info.get("routing_key") == INFERENCE_QUEUE else lanes.INTERACTIVE


def _settle(
    task: Task, rt: InferenceRuntime, job_ids: tuple[uuid.UUID, ...], handled: Handled
) -> dict[str, Any]:
    claimed = handled.claimed
    order = list(claimed)
    metrics.observe_outcomes(handled.outcomes)
    db_down = handled.outage
    if db_down is not None:  # the duplicate-cache look-up failed: the database is down
        assert isinstance(db_down, SQLAlchemyError)
        raise _db_retry(task, db_down)
    if handled.error is not None:  # the database refused this message's verdict write (in the batch)
        raise handled.error
    fault = handled.fault
    if fault is not None:
        _device_fault(task, rt, order, fault.error or DeviceFaultError.code)
    verdicts = [
        out if isinstance(out, Verdict) else _unexpected(claimed[job_id].source, out)
        for job_id, out in zip(order, handled.outcomes, strict=True)
    ]
    summary: dict[str, Any] = {"status": "done", "jobs": {}}
    for job_id, verdict in zip(order, verdicts, strict=True):
        if not verdict.done:
            summary["jobs"][str(job_id)] = _settle_failure(task, rt, job_id, claimed[job_id], verdict)
        else:
            summary["jobs"][str(job_id)] = (
                {
                    "status": "done",
                    "label": verdict.label,
                    "fake_score": round(verdict.fake_score or 0.0, 6),
                    "model_version": verdict.model_version,
                }
                if handled.recorded.get(job_id)
                else "skipped"
            )
    if len(job_ids) == 1:  # Flower shows one image per task: flatten
        (only,) = summary["jobs"].values() if summary["jobs"] else ("skipped",)
        return {"job_id": str(job_ids[0]), **(only if isinstance(only, dict) else {"status": only})}
    return summary


def _device_fault(task: Task, rt: InferenceRuntime, job_ids: list[uuid.UUID], error: str) -> NoReturn:
    """The device is broken for this process: give the message's jobs back with their attempt
    refunded, requeue the message, and end the process (``worker.app.fail_process``)."""
    rt.broken = error
    given = _with_db(task, rt, lambda s: jobs.give_back(s, job_ids, worker=rt.name))
    log.error(
        "device fault: %d jobs given back with their attempt; stopping", len(given), extra={"error": error}
    )
    fail_process(DeviceFaultError.code, error)
    raise Reject(f"device fault: {error}", requeue=True)


def _unexpected(source: str, exc: Exception) -> Verdict:
    """A failed verdict for an exception that escaped the judge (a bug): retried, then failed."""
    log.error("unexpected error judging %s: %r", source, exc, exc_info=exc)
    return Verdict(
        source=source,
        status="failed",
        error_code="INTERNAL_ERROR",
        error=f"unexpected error: {exc!r}",
        retryable=True,
    )


def _settle_failure(
    task: Task, rt: InferenceRuntime, job_id: uuid.UUID, claim: jobs.Claim, verdict: Verdict
) -> dict[str, Any] | str:
    """Fail the job (a permanent error, or out of attempts) or send it again later with backoff,
    on its own lane."""
    attempts = claim.attempts
    extra = {"job_id": str(job_id), "attempt": attempts}
    code, text = verdict.error_code or "INTERNAL_ERROR", verdict.error or ""
    if not verdict.retryable or attempts >= rt.settings.max_attempts:
        _with_db(task, rt, lambda s: jobs.finish_failed(s, job_id, code=code, message=text))
        log.info("job failed %s: %s", code, text, extra=extra)
        return {"status": "failed", "error_code": code}
    _with_db(task, rt, lambda s: jobs.release_job(s, job_id))
    delay = backoff(attempts)
    log.info("job will retry in %.1fs after %s: %s", delay, code, text, extra=extra)
    try:
        level = job_level(rt.sessions, job_id) if rt.settings.fair_share else 0
        send_job(task.app, job_id, claim.priority, countdown=delay, level=level)
    except Exception as send_exc:  # the broker is down too: the sweeper re-sends it after the lease
        log.warning("could not re-send job %s, the sweeper will: %s", job_id, send_exc, extra=extra)
    return {"status": "retrying", "error_code": code}
