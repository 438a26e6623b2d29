"""The webhook outbox: events written with the job's final state, claimed and settled by a delivery loop.

:func:`record_final` runs inside the transaction that makes jobs final (``db.jobs`` calls it from
every path: ``finish_done_many``, ``finish_failed``, ``MAX_ATTEMPTS`` failures), so an event exists
exactly when its job's outcome is committed; a crash between the two cannot lose one. For
``submission.completed`` it first looks for an unfinished job nobody else is changing (then it is
not the end, and no lock is taken); only near the end does it lock the submission row and count, so
two transactions finishing a submission's last two jobs at once cannot both miss the moment (the
second waits, then sees the first one's commit). ``dedupe_key`` turns a repeated write into a no-op.

Delivery is at least once, and each event has at most one attempt in flight: a loop asks
:func:`due_receivers` who has due rows, then :func:`claim_due` takes one receiver's oldest due rows
(``FOR UPDATE SKIP LOCKED``: a row another loop is claiming is skipped), counts the attempt, writes
a fresh ``claim_token`` and moves ``next_attempt_at`` past a lease before any POST is made. The
holder renews the lease (:func:`renew`) while its POSTs run, and :func:`settle` (or :func:`release`) only
changes rows that still carry its token. So a second loop can take a row only after its holder
stopped renewing it (killed, or stalled past the lease), and then the old holder can no longer
record or count that attempt. A delivery process killed mid-POST leaves its rows to be tried again
when the lease runs out. Writing deliveries (:func:`record_final`, :func:`redeliver`) also issues
``NOTIFY dfscan_webhooks`` on Postgres, so a waiting loop starts at the commit instead of at its next
poll (:mod:`db.notifications`). :func:`prune_settled` is the retention sweep.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db import results
from db.models import FINAL_JOB_STATES, JOB_STATES, ScanJob, Submission, Tenant, WebhookDelivery, utcnow
from db.notifications import notify
from db.tenants import webhook_secrets
from dfscan.webhooks import JOB_COMPLETED, SUBMISSION_COMPLETED, parse_events, receiver_of

log = logging.getLogger(__name__)

# The NOTIFY channel of new due deliveries (Postgres): delivery loops LISTEN on it.
CHANNEL = "dfscan_webhooks"


def result_json(row: results.ResultRow) -> dict[str, Any]:
    """A result row as `dfscan results --format json` prints it (UUIDs and datetimes as strings)."""
    out: dict[str, Any] = json.loads(json.dumps(row.output(), default=str))
    return out


def _body(event_id: uuid.UUID, event: str, data: dict[str, Any], now: datetime) -> str:
    return json.dumps(
        {"id": str(event_id), "type": event, "created_at": now.isoformat(), "data": data},
        separators=(",", ":"),
        sort_keys=True,
    )


def record_final(session: Session, job_ids: Sequence[uuid.UUID]) -> int:
    """Write the webhook events that ``job_ids`` becoming final causes. Returns how many were written.

    Call it in the transaction that made the jobs final, after the state change (and the verdict
    insert), and update no job row after it in that transaction: the submission.completed check may
    hold a share lock on another unfinished job until the commit, and a later job update waiting on
    a concurrent finisher's share lock could deadlock with it. One indexed query when no submission
    of these jobs asked for callbacks.
    """
    if not job_ids:
        return 0
    subscribed = session.execute(
        select(ScanJob.id, ScanJob.submission_id, Submission.callback_url, Submission.callback_events)
        .join(Submission, Submission.id == ScanJob.submission_id)
        .where(ScanJob.id.in_(sorted(set(job_ids))), Submission.callback_url.is_not(None))
    ).all()
    if not subscribed:
        return 0
    now = utcnow()
    rows: list[dict[str, Any]] = []
    ending: dict[uuid.UUID, str] = {}
    per_job: list[uuid.UUID] = []
    urls: dict[uuid.UUID, str] = {}
    for job_id, sub_id, url, names in subscribed:
        events = _events(names)
        urls[sub_id] = str(url)
        if JOB_COMPLETED in events:
            per_job.append(job_id)
        if SUBMISSION_COMPLETED in events:
            ending[sub_id] = str(url)
    # The payload is the result row exactly as `dfscan results --format json` prints it: one reader.
    for result in results.results(session, job_ids=per_job) if per_job else []:
        data = result_json(result)
        rows.append(
            _event(JOB_COMPLETED, result.submission_id, result.job_id, urls[result.submission_id], data, now)
        )
    for sub_id in sorted(ending):  # one lock order
        event = _submission_completed(session, sub_id, ending[sub_id], now)
        if event is not None:
            rows.append(event)
    if rows:
        session.execute(_insert_ignoring_duplicate(session), rows)
        notify(session, CHANNEL)  # wakes the delivery loops when this transaction commits
    return len(rows)


def _events(value: str | None) -> tuple[str, ...]:
    try:
        return parse_events(value)
    except ValueError:  # written by an older or foreign producer: deliver both rather than none
        return (JOB_COMPLETED, SUBMISSION_COMPLETED)


def _event(
    event: str, sub_id: uuid.UUID, job_id: uuid.UUID | None, url: str, data: dict[str, Any], now: datetime
) -> dict[str, Any]:
    event_id = uuid.uuid4()
    key = f"{event}:{job_id if job_id is not None else sub_id}"
    return {
        "id": event_id,
        "submission_id": sub_id,
        "job_id": job_id,
        "event": event,
        "dedupe_key": key,
        "url": url,
        "receiver": receiver_of(url),
        "body": _body(event_id, event, data, now),
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def _submission_completed(
    session: Session, sub_id: uuid.UUID, url: str, now: datetime
) -> dict[str, Any] | None:
    """The submission.completed event if every job of the submission is final now, else None.

    Most calls are not the end and take no lock: an unfinished job of the submission that no other
    transaction is changing (``FOR SHARE SKIP LOCKED`` finds it, and holds it until this commit) will
    be finished later by a transaction that sees this one's commit, so this one may skip. Only when
    every unfinished job is being changed by someone else (the last few jobs finishing at once) or
    none is left does it lock the submission row and count, so concurrent finishers of the last jobs
    take turns and the last one sees the others' commits."""
    if session.get_bind().dialect.name == "postgresql":
        unfinished = session.execute(_UNFINISHED, {"sub_id": sub_id}).first()
        if unfinished is not None:
            return None
    submission = session.execute(
        select(Submission).where(Submission.id == sub_id).with_for_update()
    ).scalar_one()  # the lock: concurrent finishers of this submission count one after the other
    counts = results.submission_counts(session, sub_id)
    if any(counts[state] for state in JOB_STATES if state not in FINAL_JOB_STATES):
        return None
    data = {
        "submission_id": str(sub_id),
        "client_ref": submission.client_ref,
        "total": counts["total"],
        "done": counts["done"],
        "failed": counts["failed"],
        "n_jobs": submission.n_jobs,
    }
    return _event(SUBMISSION_COMPLETED, sub_id, None, url, data, now)


# An unfinished job of a submission that no other transaction holds (see _submission_completed).
_UNFINISHED = (
    select(ScanJob.id)
    .where(ScanJob.submission_id == bindparam("sub_id"), ScanJob.state.in_(("queued", "running")))
    .limit(1)
    .with_for_update(read=True, skip_locked=True)
)


def _insert_ignoring_duplicate(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Core and RETURNING, so SQLAlchemy sends the rows as multi-row INSERTs ("insertmanyvalues");
        # without RETURNING an ON CONFLICT insert went out as one statement per row (~1 ms each).
        return (
            postgresql.insert(_TABLE)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(_TABLE.c.id)
        )
    if dialect == "sqlite":
        return sqlite.insert(WebhookDelivery).on_conflict_do_nothing(index_elements=["dedupe_key"])
    return insert(WebhookDelivery)


# --- the delivery loop's queries ------------------------------------------------------------------

# The loop's statements are built once, with bind parameters: building a statement costs more CPU than
# running it (~1 ms of the ~1.8 ms a claim took), and the loop runs them many times a second under load.
# Core, not the ORM entity: no per-row ORM bookkeeping.
_TABLE = cast(Table, WebhookDelivery.__table__)
_PENDING = _TABLE.c.state == "pending"
_RECEIVERS = (
    select(_TABLE.c.receiver, func.min(_TABLE.c.next_attempt_at).label("oldest"))
    .where(
        _PENDING,
        _TABLE.c.next_attempt_at <= bindparam("now"),
        _TABLE.c.receiver.not_in(bindparam("skip", expanding=True)),
    )
    .group_by(_TABLE.c.receiver)
    .order_by(func.min(_TABLE.c.next_attempt_at))
    .limit(bindparam("limit"))
)
_DUE = (
    select(_TABLE.c.id)
    .where(
        _PENDING, _TABLE.c.receiver == bindparam("b_receiver"), _TABLE.c.next_attempt_at <= bindparam("now")
    )
    .order_by(_TABLE.c.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
    .cte("due")  # run once: as a subquery, Postgres may rescan it per row and take more than the limit
)
_CLAIM = (
    update(_TABLE)
    .where(_TABLE.c.id.in_(select(_DUE.c.id)), _PENDING)
    .values(
        attempts=_TABLE.c.attempts + 1,
        next_attempt_at=bindparam("lease_until"),
        claim_token=bindparam("token"),
        updated_at=bindparam("now"),
    )
    .returning(_TABLE.c.id, _TABLE.c.event, _TABLE.c.url, _TABLE.c.body, _TABLE.c.attempts)
)
# Every statement that follows a claim names the claim's token: a row whose lease another loop took
# over (new token) is left alone, so an attempt is recorded, and counted, by one claim only.
_HELD = and_(
    _TABLE.c.id.in_(bindparam("ids", expanding=True)), _TABLE.c.claim_token == bindparam("token"), _PENDING
)
_RENEW = update(_TABLE).where(_HELD).values(next_attempt_at=bindparam("lease_until")).returning(_TABLE.c.id)
_RELEASE = (
    update(_TABLE)
    .where(_HELD)
    .values(attempts=_TABLE.c.attempts - 1, next_attempt_at=bindparam("due_at"), claim_token=None)
)
_DELIVERED = (
    update(_TABLE)
    .where(_HELD)
    .values(
        state="delivered",
        delivered_at=bindparam("now"),
        last_status=bindparam("status"),
        error_code=None,
        error_message=None,
        claim_token=None,
        updated_at=bindparam("now"),
    )
)
_FAILED = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("b_id"), _TABLE.c.claim_token == bindparam("b_token"), _PENDING)
    .values(
        state=bindparam("b_state"),
        next_attempt_at=bindparam("b_next"),  # a given-up row is never claimed again
        last_status=bindparam("b_status"),
        error_code=bindparam("b_code"),
        error_message=bindparam("b_message"),
        claim_token=None,
        updated_at=bindparam("b_now"),
    )
)


@dataclass(frozen=True)
class Due:
    """A delivery claimed for one attempt."""

    id: uuid.UUID
    event: str
    url: str
    body: str
    attempts: int  # including this one
    token: uuid.UUID  # the claim's fencing token
    receiver: str = ""
    # The secrets of the submission's tenant to sign with (the current one, and the previous one during a
    # rotation's grace period); empty: DFSCAN_WEBHOOK_SECRET signs it.
    secrets: tuple[str, ...] = ()


def due_receivers(
    session: Session, *, limit: int = 256, skip: Sequence[str] = (), now: datetime | None = None
) -> list[str]:
    """Receivers that have due deliveries, the one waiting longest first (at most ``limit``), leaving
    out ``skip`` (those the caller cannot serve now: so many dead receivers cannot crowd out the rest)."""
    params = {"now": now or utcnow(), "limit": limit, "skip": sorted(skip)}
    rows = session.execute(_RECEIVERS, params).all()
    return [str(row.receiver) for row in rows]


def claim_due(
    session: Session,
    *,
    limit: int,
    lease_seconds: float,
    receiver: str,
    now: datetime | None = None,
) -> list[Due]:
    """Take up to ``limit`` of ``receiver``'s due deliveries, oldest first, for one attempt each: count
    it, push the next try past the lease, write a fresh fencing token. Rows another loop holds are
    skipped, not waited for; a row stays held until the holder settles, releases or stops renewing it
    (then its lease runs out and another claim, with another token, may take it)."""
    now = now or utcnow()
    token = uuid.uuid4()
    until = now + timedelta(seconds=lease_seconds)
    params = {"now": now, "limit": limit, "lease_until": until, "token": token, "b_receiver": receiver}
    rows = session.execute(_CLAIM, params).all()
    return [Due(row.id, row.event, row.url, row.body, row.attempts, token, receiver) for row in rows]


def with_secrets(session: Session, rows: Sequence[Due], *, now: datetime | None = None) -> list[Due]:
    """``rows`` with the signing secrets of their tenants (one query for the lot)."""
    if not rows:
        return []
    query = (
        select(WebhookDelivery.id, Tenant)
        .join(Submission, Submission.id == WebhookDelivery.submission_id)
        .join(Tenant, Tenant.id == Submission.tenant_id)
        .where(WebhookDelivery.id.in_([row.id for row in rows]))
    )
    secrets = {
        delivery_id: tuple(webhook_secrets(tenant, now=now)) for delivery_id, tenant in session.execute(query)
    }
    return [replace(row, secrets=secrets.get(row.id, ())) for row in rows]


def _by_token(held: Sequence[Due]) -> dict[uuid.UUID, list[uuid.UUID]]:
    groups: dict[uuid.UUID, list[uuid.UUID]] = {}
    for due in held:
        groups.setdefault(due.token, []).append(due.id)
    return groups


def renew(
    session: Session, held: Sequence[Due], *, lease_seconds: float, now: datetime | None = None
) -> set[uuid.UUID]:
    """Push the lease of rows still held (same token, pending) ``lease_seconds`` past ``now``; returns
    the ids renewed (a missing one was taken over or redelivered: its holder lost it)."""
    until = (now or utcnow()) + timedelta(seconds=lease_seconds)
    renewed: set[uuid.UUID] = set()
    for token, ids in _by_token(held).items():
        renewed.update(session.scalars(_RENEW, {"ids": ids, "token": token, "lease_until": until}))
    return renewed


def release(
    session: Session, held: Sequence[Due], *, now: datetime | None = None, after: float = 0.0
) -> None:
    """Give back claimed rows that were never POSTed: due again ``after`` seconds from now (at once by
    default), their attempt not counted."""
    due_at = (now or utcnow()) + timedelta(seconds=after)
    for token, ids in _by_token(held).items():
        session.execute(_RELEASE, {"ids": ids, "token": token, "due_at": due_at})


def retry_delay(attempts: int, *, base: float, cap: float) -> float:
    """Seconds before the next attempt after ``attempts`` tries: ``base * 2**(attempts-1)``, capped,
    with +-20 % jitter so a receiver that comes back is not hit by every delivery at once."""
    return min(cap, base * 2 ** max(0, attempts - 1)) * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class Outcome:
    """How one claimed attempt ended: delivered (``code`` None), retry in ``retry_in`` seconds, or
    (``code`` set, ``retry_in`` None) given up. ``token`` is the claim's fencing token."""

    id: uuid.UUID
    status: int | None  # the HTTP status, when there was an answer
    code: str | None = None
    message: str = ""
    retry_in: float | None = None
    token: uuid.UUID | None = None


def settle(session: Session, outcomes: Sequence[Outcome], *, now: datetime | None = None) -> int:
    """Record outcomes in a bounded number of statements, whatever their number: one UPDATE per claim
    and distinct 2xx status for the delivered rows (``WHERE id IN (...)``; one or two in practice),
    one executemany for the failed attempts. Only rows still pending under the outcome's claim token
    change: a row redelivered, or taken over by another loop after its lease ran out, is left to its
    new holder. Returns how many rows changed."""
    now = now or utcnow()
    changed = 0
    delivered: dict[tuple[uuid.UUID | None, int | None], list[uuid.UUID]] = {}
    failed: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.code is None:
            delivered.setdefault((outcome.token, outcome.status), []).append(outcome.id)
        else:
            give_up = outcome.retry_in is None
            failed.append(
                {
                    "b_id": outcome.id,
                    "b_token": outcome.token,
                    "b_state": "failed" if give_up else "pending",
                    "b_next": now if give_up else now + timedelta(seconds=outcome.retry_in or 0.0),
                    "b_status": outcome.status,
                    "b_code": outcome.code,
                    "b_message": outcome.message[:2000],
                    "b_now": now,
                }
            )
    for (token, status), ids in delivered.items():
        result = session.execute(_DELIVERED, {"ids": ids, "token": token, "now": now, "status": status})
        changed += result.rowcount  # type: ignore[attr-defined]
    if failed:
        result = session.execute(_FAILED, failed)
        changed += result.rowcount  # type: ignore[attr-defined]
    return changed


def redeliver(session: Session, delivery_id: uuid.UUID) -> bool:
    """Send a delivery again now, with a fresh set of attempts (also a delivered or given-up one).

    A row whose attempt is in flight (pending, claimed, lease not run out) keeps its claim: its POST
    settles it, and no second loop can POST it meanwhile."""
    now = utcnow()
    in_flight = and_(
        WebhookDelivery.state == "pending",
        WebhookDelivery.claim_token.is_not(None),
        WebhookDelivery.next_attempt_at > now,
    )
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            state="pending",
            attempts=0,
            next_attempt_at=case((in_flight, WebhookDelivery.next_attempt_at), else_=now),
            claim_token=case((in_flight, WebhookDelivery.claim_token), else_=None),
            delivered_at=None,
            updated_at=now,
        )
        .returning(WebhookDelivery.id),
        execution_options={"synchronize_session": False},
    )
    found = result.first() is not None
    if found:
        notify(session, CHANNEL)
    return found


def prune_settled(session: Session, *, older_than: datetime, limit: int = 5000) -> int:
    """Delete up to ``limit`` delivered or given-up deliveries last changed before ``older_than``,
    oldest first (the retention sweep; pending rows are never deleted). Returns how many went.

    Bounded per call, so one sweep never holds many row locks or writes a huge transaction; the
    sweeper calls it until it deletes fewer than ``limit``."""
    doomed = (
        select(_TABLE.c.id)
        .where(_TABLE.c.state.in_(("delivered", "failed")), _TABLE.c.updated_at < older_than)
        .order_by(_TABLE.c.updated_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        doomed = doomed.with_for_update(skip_locked=True)
    result = session.execute(delete(_TABLE).where(_TABLE.c.id.in_(doomed.scalar_subquery())))
    return int(result.rowcount)  # type: ignore[attr-defined]


def list_deliveries(
    session: Session,
    *,
    failed_only: bool = False,
    submission_id: uuid.UUID | None = None,
    limit: int | None = 100,
) -> list[WebhookDelivery]:
    """Deliveries, oldest first; ``failed_only``: given up, or pending after at least one failure."""
    query = select(WebhookDelivery)
    if failed_only:
        query = query.where(
            (WebhookDelivery.state == "failed")
            | ((WebhookDelivery.state == "pending") & WebhookDelivery.error_code.is_not(None))
        )
    if submission_id is not None:
        query = query.where(WebhookDelivery.submission_id == submission_id)
    query = query.order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def redeliver_matching(
    session: Session,
    *,
    failed_only: bool = False,
    since: datetime | None = None,
    receiver: str | None = None,
    submission_id: uuid.UUID | None = None,
    limit: int = 1000,
) -> list[uuid.UUID]:
    """`dfscan webhooks redeliver --failed/--since/--receiver/--submission`: :func:`redeliver` every
    matching delivery, oldest first, at most ``limit``; returns their ids. ``failed_only``: given up
    (state failed; pending ones are retried anyway); ``since``: created at or after; ``receiver``:
    callback URL starts with it."""
    query = select(WebhookDelivery.id)
    if failed_only:
        query = query.where(WebhookDelivery.state == "failed")
    if since is not None:
        query = query.where(WebhookDelivery.created_at >= since)
    if receiver is not None:
        query = query.where(WebhookDelivery.url.startswith(receiver, autoescape=True))
    if submission_id is not None:
        query = query.where(WebhookDelivery.submission_id == submission_id)
    ids = list(session.scalars(query.order_by(WebhookDelivery.created_at, WebhookDelivery.id).limit(limit)))
    return [delivery_id for delivery_id in ids if redeliver(session, delivery_id)]
