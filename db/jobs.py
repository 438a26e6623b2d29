"""The scan-job lifecycle: submit, send (outbox), claim, finish, release, sweep.

Every state change is one guarded ``UPDATE ... WHERE state IN (...)``, so a redelivered message, a
second worker or a sweeper racing a worker can never move a final job (done/failed) again, and a
job gets at most one verdict (``verdicts.job_id`` is unique besides). Functions take a Session and
never commit: the caller owns the transaction (``with sessions.begin() as session: ...``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import webhooks
from db.models import ScanJob, Submission, utcnow
from db.verdicts import OPTIONAL_FIELDS, VERDICT_FIELDS, done_fields, write_rows
from db.verdicts import cached_verdicts as cached_verdicts  # the duplicate cache, where callers look for it
from dfscan.exceptions import IdempotencyConflictError, MaxAttemptsError
from dfscan.tenants import DEFAULT_TENANT_ID
from dfscan.uploads import UPLOAD_SCHEME
from dfscan.verdicts import Verdict
from dfscan.webhooks import EVENTS as WEBHOOK_EVENTS

log = logging.getLogger(__name__)

MAX_ATTEMPTS_CODE = MaxAttemptsError.code
# The table under the model: the worker's hottest statements (claim, finish) are Core statements on
# it, built once at import with bound parameters (the verdict writes and cache look-up: db/verdicts.py).
_JOBS: Table = ScanJob.__table__  # type: ignore[assignment]
ACTIVE = ("queued", "running")


def create_submission(
    session: Session,
    sources: Sequence[str],
    *,
    client_ref: str | None = None,
    priority: int = 0,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    callback_events: Sequence[str] | None = None,
    tenant_id: uuid.UUID = DEFAULT_TENANT_ID,
    api_key_id: uuid.UUID | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[Submission, list[ScanJob], bool]:
    """Store a submission and one queued, unsent job per source (``seq`` = position in ``sources``).

    Returns ``(submission, jobs, created)``. With an ``idempotency_key`` already used, nothing is
    written and the existing submission and its jobs come back with ``created=False`` (also when two
    callers race on the same key). Reusing a key for different sources, or with another callback URL
    or other events, raises IDEMPOTENCY_CONFLICT (IdempotencyConflictError, a ValueError): the first
    submission's callback is never silently kept for a caller that asked for another.
    ``callback_url`` asks for webhook events (``callback_events``, default every event) as jobs end.
    Everything written belongs to ``tenant_id`` (default: the default tenant); an idempotency key is
    looked up within that tenant only. ``api_key_id``: the HTTP API key submitting (its quota counts the jobs).
    ``options``: the per-job options every intake checked (``dfscan.options.JobOptions.stored()``), kept on
    each job row for the worker; a replayed key with other options is IDEMPOTENCY_CONFLICT too.
    """
    stored_options = dict(options) if options else None
    events = ",".join(callback_events or WEBHOOK_EVENTS) if callback_url else None
    if idempotency_key is not None:
        existing = _replay(
            session, tenant_id, idempotency_key, sources, (callback_url, events), stored_options
        )
        if existing is not None:
            return existing
    submission = Submission(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        client_ref=client_ref,
        idempotency_key=idempotency_key,
        priority=priority,
        n_jobs=len(sources),
        callback_url=callback_url,
        callback_events=events,
    )
    jobs = [
        ScanJob(
            submission_id=submission.id,
            tenant_id=tenant_id,
            api_key_id=api_key_id,
            seq=seq,
            source=source,
            client_ref=client_ref,
            priority=priority,
            **({"options": stored_options} if stored_options else {}),  # none: SQL NULL, not JSON null
        )
        for seq, source in enumerate(sources)
    ]
    try:
        with session.begin_nested():
            session.add(submission)
            session.flush()  # the submission row first: jobs reference it
            session.add_all(jobs)
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = _replay(
            session, tenant_id, idempotency_key, sources, (callback_url, events), stored_options
        )
        if existing is None:
            raise
        return existing
    log.info(
        "submission %s stored with %d jobs", submission.id, len(jobs), extra={"submission": submission.id}
    )
    return submission, jobs, True


def _replay(
    session: Session,
    tenant_id: uuid.UUID,
    idempotency_key: str,
    sources: Sequence[str],
    callback: tuple[str | None, str | None],
    options: dict[str, Any] | None = None,
) -> tuple[Submission, list[ScanJob], bool] | None:
    submission = session.scalars(
        select(Submission).where(
            Submission.tenant_id == tenant_id, Submission.idempotency_key == idempotency_key
        )
    ).one_or_none()
    if submission is None:
        return None
    jobs = list(
        session.scalars(select(ScanJob).where(ScanJob.submission_id == submission.id).order_by(ScanJob.seq))
    )
    if [job.source for job in jobs] != list(sources):
        raise IdempotencyConflictError(
            f"idempotency key {idempotency_key!r} was already used for submission {submission.id} with "
            "different sources; use a new key for a new submission"
        )
    if (submission.callback_url, submission.callback_events) != callback:
        raise IdempotencyConflictError(
            f"idempotency key {idempotency_key!r} was already used for submission {submission.id} with "
            "another callback URL or other callback events; resubmit with the same callback, or use a new key"
        )
    if any((job.options or None) != options for job in jobs):
        raise IdempotencyConflictError(
            f"idempotency key {idempotency_key!r} was already used for submission {submission.id} with "
            "other options (explain, faces); resubmit with the same options, or use a new key"
        )
    return submission, jobs, False


def outstanding_jobs(session: Session, api_key_id: uuid.UUID) -> int:
    """Jobs the API key submitted that are queued or running (its quota)."""
    query = select(func.count()).where(ScanJob.api_key_id == api_key_id, ScanJob.state.in_(ACTIVE))
    return int(session.scalar(query) or 0)


def tenant_backlogs(
    session: Session, job_ids: Sequence[uuid.UUID], *, beyond: int
) -> tuple[dict[uuid.UUID, uuid.UUID], dict[uuid.UUID, int]]:
    """The tenant of each job, and each of those tenants' jobs outstanding (queued or running), counted
    up to its jobs here plus ``beyond`` at most (a deeper backlog only needs to be known as deep: the
    count reads the partial index ``ix_scan_jobs_tenant_id_active``, never a tenant's history)."""
    if not job_ids:
        return {}, {}
    rows = session.execute(select(ScanJob.id, ScanJob.tenant_id).where(ScanJob.id.in_(list(job_ids))))
    tenant_of = {row.id: row.tenant_id for row in rows}
    mine: dict[uuid.UUID, int] = {}
    for tenant_id in tenant_of.values():
        mine[tenant_id] = mine.get(tenant_id, 0) + 1
    counts: dict[uuid.UUID, int] = {}
    for tenant_id, n in mine.items():
        capped = (
            select(ScanJob.id)
            .where(ScanJob.tenant_id == tenant_id, ScanJob.state.in_(ACTIVE))
            .limit(n + beyond)
            .subquery()
        )
        counts[tenant_id] = int(session.scalar(select(func.count()).select_from(capped)) or 0)
    return tenant_of, counts


def active_upload_digests(session: Session) -> set[str]:
    """SHA-256 digests of uploads that queued or running jobs still have to read (kept by the retention sweep)."""
    query = select(ScanJob.source).where(
        ScanJob.state.in_(ACTIVE), ScanJob.source.startswith(UPLOAD_SCHEME, autoescape=True)
    )
    return {source[len(UPLOAD_SCHEME) :] for source in session.scalars(query)}


def unsent_jobs(session: Session, limit: int = 500) -> list[ScanJob]:
    """Queued jobs whose message was never sent (the outbox), oldest first."""
    query = (
        select(ScanJob)
        .where(ScanJob.enqueued_at.is_(None), ScanJob.state == "queued")
        .order_by(ScanJob.created_at, ScanJob.submission_id, ScanJob.seq)
        .limit(limit)
    )
    return list(session.scalars(query))


def mark_enqueued(session: Session, job_ids: Sequence[uuid.UUID], *, now: datetime | None = None) -> None:
    """Record that the messages of ``job_ids`` were sent."""
    if not job_ids:
        return
    now = now or utcnow()
    session.execute(
        update(ScanJob).where(ScanJob.id.in_(list(job_ids))).values(enqueued_at=now, updated_at=now),
        execution_options={"synchronize_session": False},
    )


def _guarded_update(session: Session, job_id: uuid.UUID, states: Sequence[str], **values: Any) -> bool:
    result = session.execute(
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.state.in_(list(states)))
        .values(**values)
        .returning(ScanJob.id),
        execution_options={"synchronize_session": False},
    )
    return result.first() is not None


class Claim(NamedTuple):
    """What a worker needs of a job it claimed."""

    source: str
    attempts: int
    priority: int
    # When the job was (last) sent, or written if that send is not recorded yet: its queue wait starts here.
    queued_at: datetime | None = None
    # The per-job options as stored (dfscan/options.py), None when the submission gave none.
    options: dict[str, Any] | None = None
    # The job's tenant (its near-duplicate and cache look-ups stay inside it), read by the claim itself.
    tenant_id: uuid.UUID = DEFAULT_TENANT_ID


def claim_jobs(
    session: Session, job_ids: Sequence[uuid.UUID], *, worker: str, lease_seconds: int, max_attempts: int
) -> dict[uuid.UUID, Claim]:
    """Mark each job running for ``worker`` and count an attempt, in two statements for the lot.

    Returns ``{job_id: Claim(source, attempts, priority)}`` for the jobs claimed. A job left out means: ack and do
    nothing. It is missing or already final (a redelivery), or this attempt would exceed
    ``max_attempts``, in which case it is failed with ``MAX_ATTEMPTS`` first.
    """
    ids = sorted(set(job_ids))  # one lock order for every batch
    if not ids:
        return {}
    now = utcnow()
    claimed = session.execute(
        _CLAIM,
        {
            "ids": ids,
            "now": now,
            "max_attempts": max_attempts,
            "claim_worker": worker,
            "claim_lease": now + timedelta(seconds=lease_seconds),
        },
    ).all()
    out = {
        row.id: Claim(
            row.source,
            row.attempts,
            row.priority,
            row.queued_at,
            row.options,
            row.tenant_id or DEFAULT_TENANT_ID,
        )
        for row in claimed
    }
    rest = [job_id for job_id in ids if job_id not in out]
    if rest:  # out of attempts (fail it), or held by a live worker's lease (leave it to that worker)
        message = f"job was tried {max_attempts} times (the limit) without finishing"
        failed = _fail_max_attempts(
            session,
            and_(ScanJob.id.in_(rest), _claimable(now), ScanJob.attempts >= max_attempts),
            message,
            now,
        )
        for job_id in failed:
            log.warning("job %s failed: %s", job_id, message, extra={"job_id": str(job_id)})
    return out


def _claimable(now: Any) -> Any:
    """Queued, or running for a worker that is gone (its lease ran out: live workers renew theirs).

    A redelivered message (Redis' visibility timeout, a sweeper's re-send) of a job that a live
    worker holds is acknowledged and does nothing: one job is never judged by two workers at once.
    """
    jobs_ = _JOBS.c
    return or_(
        jobs_.state == "queued",
        and_(jobs_.state == "running", or_(jobs_.lease_until.is_(None), jobs_.lease_until < now)),
    )


# Built once: constructing a statement object costs more CPU than compiling (cached) and sending it.
_CLAIM = (
    update(_JOBS)
    .where(
        _JOBS.c.id.in_(bindparam("ids", expanding=True)),
        _claimable(bindparam("now")),
        _JOBS.c.attempts < bindparam("max_attempts"),
    )
    .values(
        state="running",
        attempts=_JOBS.c.attempts + 1,
        worker=bindparam("claim_worker"),
        started_at=bindparam("now"),
        lease_until=bindparam("claim_lease"),
        updated_at=bindparam("now"),
    )
    .returning(
        _JOBS.c.id,
        _JOBS.c.source,
        _JOBS.c.attempts,
        _JOBS.c.priority,
        func.coalesce(_JOBS.c.enqueued_at, _JOBS.c.created_at).label("queued_at"),
        _JOBS.c.options,
        _JOBS.c.tenant_id,
    )
)


def renew_leases(
    session: Session, job_ids: Sequence[uuid.UUID], *, worker: str, lease_seconds: int
) -> list[uuid.UUID]:
    """Push the lease of ``worker``'s running jobs ``lease_seconds`` into the future (one UPDATE).

    Guarded on ``state = 'running' AND worker = worker``: a job that finished, was released, or was
    taken over after this worker lost it (lease expired during a pause) is left alone. Returns the
    ids renewed.
    """
    ids = sorted(set(job_ids))
    if not ids:
        return []
    now = utcnow()
    return list(
        session.scalars(
            update(ScanJob)
            .where(ScanJob.id.in_(ids), ScanJob.state == "running", ScanJob.worker == worker)
            .values(lease_until=now + timedelta(seconds=lease_seconds))
            .returning(ScanJob.id),
            execution_options={"synchronize_session": False},
        )
    )


def _fail_max_attempts(
    session: Session, where: Any, message: str, now: datetime, *, events: bool = True
) -> list[uuid.UUID]:
    """Fail the jobs matching ``where`` with ``MAX_ATTEMPTS``; return their ids. ``events=False``: the
    caller writes their webhook events itself, after its last job update."""
    failed = list(
        session.scalars(
            update(ScanJob)
            .where(where)
            .values(
                state="failed",
                error_code=MAX_ATTEMPTS_CODE,
                error_message=message,
                finished_at=now,
                updated_at=now,
                lease_until=None,
            )
            .returning(ScanJob.id),
            execution_options={"synchronize_session": False},
        )
    )
    if events:
        webhooks.record_final(session, failed)
    return failed


def claim_job(
    session: Session, job_id: uuid.UUID, *, worker: str, lease_seconds: int, max_attempts: int
) -> ScanJob | None:
    """``claim_jobs`` for one job, returning its row (None means: ack and do nothing)."""
    if not claim_jobs(
        session, [job_id], worker=worker, lease_seconds=lease_seconds, max_attempts=max_attempts
    ):
        return None
    return session.get(ScanJob, job_id, populate_existing=True)


_FINISH_DONE = (
    update(_JOBS)
    .where(_JOBS.c.id.in_(bindparam("ids", expanding=True)), _JOBS.c.state.in_(ACTIVE))
    .values(
        state="done",
        error_code=None,
        error_message=None,
        finished_at=bindparam("now"),
        updated_at=bindparam("now"),
        lease_until=None,
        worker=bindparam("done_worker"),
    )
    .returning(_JOBS.c.id)
)


def finish_done_many(session: Session, verdicts: Sequence[dict[str, Any]]) -> set[uuid.UUID]:
    """Mark jobs done and store their verdicts (one UPDATE and one INSERT for the lot).

    Each dict has ``job_id`` and every name in ``VERDICT_FIELDS`` (``Verdict.row()`` plus ``worker``), and
    for a video ``frames``: (t, fake_score) pairs written to verdict_frames in the same transaction, for
    the jobs this call finished only. Returns the ids this call
    finished. The job rows are updated first, guarded on a non-final state: on PostgreSQL the row
    locks make a concurrent redelivery wait, then see ``done`` and write nothing. The verdict insert
    is ``ON CONFLICT (job_id) DO NOTHING`` as a second line of defence. A job that already failed
    keeps its failure and gets no verdict.
    """
    by_id = {v["job_id"]: v for v in verdicts}
    if not by_id:
        return set()
    now = utcnow()
    done = session.scalars(
        _FINISH_DONE, {"ids": sorted(by_id), "now": now, "done_worker": _single_worker(by_id)}
    ).all()
    write_rows(session, by_id, done)
    if done:  # the job.completed events, written in the transaction that made the jobs final
        webhooks.record_final(session, done)
    return set(done)


def _single_worker(by_id: dict[uuid.UUID, dict[str, Any]]) -> str | None:
    """The worker recorded on the job rows (every verdict of one call comes from one worker)."""
    workers = {v.get("worker") for v in by_id.values()}
    return workers.pop() if len(workers) == 1 else None


def finish_done(session: Session, job_id: uuid.UUID, **verdict: Any) -> bool:
    """``finish_done_many`` for one job (keywords: ``VERDICT_FIELDS``); True if this call made the outcome."""
    missing = set(VERDICT_FIELDS) - set(verdict) - set(OPTIONAL_FIELDS)
    if missing:
        raise TypeError(f"finish_done needs {sorted(missing)}")
    return job_id in finish_done_many(session, [{"job_id": job_id, **verdict}])


def record_verdict(session: Session, job_id: uuid.UUID, verdict: Verdict, *, worker: str) -> bool:
    """Store the final outcome ``verdict`` of a job: done with its verdict row, or failed with its code.
    True if this call made the outcome (False: the job was already final)."""
    if verdict.done:
        return finish_done(session, job_id, **done_fields(verdict, worker=worker))
    return finish_failed(
        session, job_id, code=verdict.error_code or "INTERNAL_ERROR", message=verdict.error or ""
    )


def finish_failed(session: Session, job_id: uuid.UUID, *, code: str, message: str) -> bool:
    """Mark the job failed with ``code``; True if this call made the outcome (False: already final)."""
    return job_id in finish_failed_many(session, [job_id], code=code, message=message)


def finish_failed_many(
    session: Session, job_ids: Sequence[uuid.UUID], *, code: str, message: str
) -> set[uuid.UUID]:
    """Mark every job of ``job_ids`` that is not final yet failed with ``code``, in one UPDATE (rows
    locked in id order), then write their webhook events once (``webhooks.record_final``: no job row
    is updated after it in the transaction). Returns the ids this call made final."""
    ids = sorted(set(job_ids))
    if not ids:
        return set()
    now = utcnow()
    failed = session.scalars(
        update(ScanJob)
        .where(ScanJob.id.in_(ids), ScanJob.state.in_(ACTIVE))
        .values(
            state="failed",
            error_code=code,
            error_message=message,
            finished_at=now,
            updated_at=now,
            lease_until=None,
        )
        .returning(ScanJob.id),
        execution_options={"synchronize_session": False},
    ).all()
    if failed:
        webhooks.record_final(session, failed)
    return set(failed)


def give_back(session: Session, job_ids: Sequence[uuid.UUID], *, worker: str) -> set[uuid.UUID]:
    """Put ``worker``'s running jobs back to queued and refund the attempt their claim counted (one
    UPDATE): the worker, not the job, failed (a broken device), so the job keeps every attempt it had.
    Guarded on ``state = 'running' AND worker = worker``: a job taken over meanwhile is left alone.
    Returns the ids given back."""
    ids = sorted(set(job_ids))
    if not ids:
        return set()
    given = session.scalars(
        update(ScanJob)
        .where(ScanJob.id.in_(ids), ScanJob.state == "running", ScanJob.worker == worker)
        .values(
            state="queued",
            worker=None,
            lease_until=None,
            attempts=func.greatest(ScanJob.attempts - 1, 0)
            if session.get_bind().dialect.name == "postgresql"
            else func.max(ScanJob.attempts - 1, 0),
            updated_at=utcnow(),
        )
        .returning(ScanJob.id),
        execution_options={"synchronize_session": False},
    ).all()
    return set(given)


def release_job(session: Session, job_id: uuid.UUID) -> None:
    """Put a running job back to queued (retry later, or a worker draining on shutdown).

    ``enqueued_at`` is kept: the message still exists (or the sweeper re-sends it after the lease).
    """
    _guarded_update(
        session, job_id, ("running",), state="queued", worker=None, lease_until=None, updated_at=utcnow()
    )


def sweep_stale(
    session: Session,
    *,
    now: datetime | None = None,
    lease_seconds: int,
    max_attempts: int,
    include_queued: bool | Collection[uuid.UUID] = True,
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Recover jobs whose message or worker was lost. Returns ``(to_resend, failed)``.

    Stale: queued with a sent message and no change for ``lease_seconds``, or running past its
    lease. Stale jobs that used all their attempts fail with ``MAX_ATTEMPTS``; the others go back to
    queued with ``enqueued_at = now``, and the caller sends a message for each id in ``to_resend``.
    ``include_queued=False`` leaves queued jobs alone: a long backlog is not a lost message. A
    collection of ids limits the queued jobs considered to those (the sweeper passes the stale queued
    jobs that no message in the broker names, see ``worker.sweeper.lost_queued_jobs``).
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    stale_running = and_(
        ScanJob.state == "running", or_(ScanJob.lease_until.is_(None), ScanJob.lease_until < now)
    )
    stale_queued = and_(
        ScanJob.state == "queued", ScanJob.enqueued_at.is_not(None), ScanJob.updated_at < cutoff
    )
    if include_queued is True:
        stale = or_(stale_queued, stale_running)
    elif include_queued is False or not include_queued:
        stale = stale_running
    else:
        stale = or_(and_(stale_queued, ScanJob.id.in_(sorted(set(include_queued)))), stale_running)
    failed = _fail_max_attempts(
        session,
        and_(stale, ScanJob.attempts >= max_attempts),
        f"job was lost or timed out after {max_attempts} attempts (the limit)",
        now,
        events=False,
    )
    resend = session.scalars(
        update(ScanJob)
        .where(stale)
        .values(state="queued", enqueued_at=now, updated_at=now, worker=None, lease_until=None)
        .returning(ScanJob.id),
        execution_options={"synchronize_session": False},
    ).all()
    webhooks.record_final(session, failed)  # last: no job update may follow it (see record_final)
    if failed or resend:
        log.info("sweep: %d jobs to re-send, %d failed with %s", len(resend), len(failed), MAX_ATTEMPTS_CODE)
    return list(resend), list(failed)


def count_sent_queued(session: Session, *, older_than: datetime | None = None) -> int:
    """Queued jobs whose message was sent (and, with ``older_than``, that have not changed since):
    what the broker should be holding for them."""
    return int(session.scalar(select(func.count()).select_from(ScanJob).where(_sent_queued(older_than))) or 0)


def sent_queued_ids(session: Session, *, older_than: datetime) -> list[uuid.UUID]:
    """The ids ``count_sent_queued(older_than=...)`` counts."""
    return list(session.scalars(select(ScanJob.id).where(_sent_queued(older_than))))


def _sent_queued(older_than: datetime | None) -> Any:
    sent = and_(ScanJob.state == "queued", ScanJob.enqueued_at.is_not(None))
    return sent if older_than is None else and_(sent, ScanJob.updated_at < older_than)


def priorities(session: Session, job_ids: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, int]]:
    """``(job id, priority)`` of each job, to send its message to its own lane."""
    if not job_ids:
        return []
    rows = session.execute(select(ScanJob.id, ScanJob.priority).where(ScanJob.id.in_(list(job_ids))))
    return [(row.id, row.priority) for row in rows]


def get_job(session: Session, job_id: uuid.UUID) -> ScanJob | None:
    """The job row as it is in the database now (refreshing any copy the session holds)."""
    return session.get(ScanJob, job_id, populate_existing=True)
