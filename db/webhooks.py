"""The webhook outbox: events written with the job's final state, claimed and settled by a delivery loop.

:func:`record_final` runs inside the transaction that makes jobs final (``db.jobs`` calls it from
every path: ``finish_done_many``, ``finish_failed``, ``MAX_ATTEMPTS`` failures), so an event exists
exactly when its job's outcome is committed; a crash between the two cannot lose one. For
``submission.completed`` it locks the submission row before counting unfinished jobs, so two
transactions finishing a submission's last two jobs at once cannot both miss the moment (the second
waits, then sees the first one's commit). ``dedupe_key`` turns a repeated write into a no-op.

Delivery is at least once: :func:`claim_due` takes due rows with ``FOR UPDATE SKIP LOCKED`` (many
delivery loops never take the same row) and moves ``next_attempt_at`` past the attempt before any
POST is made, so a delivery process killed mid-POST leaves its rows to be tried again later.
Writing deliveries (:func:`record_final`, :func:`redeliver`) also issues ``NOTIFY dfscan_webhooks``
on Postgres, so a waiting loop starts at the commit instead of at its next poll
(:mod:`db.notifications`). :func:`settle` records a round's outcomes in a few statements.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db import results
from db.models import FINAL_JOB_STATES, JOB_STATES, ScanJob, Submission, WebhookDelivery, utcnow
from db.notifications import notify
from dfscan.webhooks import JOB_COMPLETED, SUBMISSION_COMPLETED, parse_events

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
    insert). One indexed query when no submission of these jobs asked for callbacks.
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
    """The submission.completed event if every job of the submission is final now, else None."""
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


def _insert_ignoring_duplicate(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(WebhookDelivery).on_conflict_do_nothing(index_elements=["dedupe_key"])
    if dialect == "sqlite":
        return sqlite.insert(WebhookDelivery).on_conflict_do_nothing(index_elements=["dedupe_key"])
    return insert(WebhookDelivery)


# --- the delivery loop's queries ------------------------------------------------------------------

# The loop's statements are built once, with bind parameters: building a statement costs more CPU than
# running it (~1 ms of the ~1.8 ms a claim took), and the loop runs them many times a second under load.
# Core, not the ORM entity: no per-row ORM bookkeeping.
_TABLE = cast(Table, WebhookDelivery.__table__)
_DUE = (
    select(_TABLE.c.id)
    .where(_TABLE.c.state == "pending", _TABLE.c.next_attempt_at <= bindparam("now"))
    .order_by(_TABLE.c.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(_TABLE)
    .where(_TABLE.c.id.in_(_DUE.scalar_subquery()), _TABLE.c.state == "pending")
    .values(
        attempts=_TABLE.c.attempts + 1, next_attempt_at=bindparam("lease_until"), updated_at=bindparam("now")
    )
    .returning(_TABLE.c.id, _TABLE.c.event, _TABLE.c.url, _TABLE.c.body, _TABLE.c.attempts)
)
_DELIVERED = (
    update(_TABLE)
    .where(_TABLE.c.id.in_(bindparam("ids", expanding=True)), _TABLE.c.state == "pending")
    .values(
        state="delivered",
        delivered_at=bindparam("now"),
        last_status=bindparam("status"),
        error_code=None,
        error_message=None,
        updated_at=bindparam("now"),
    )
)
_FAILED = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("b_id"), _TABLE.c.state == "pending")
    .values(
        state=bindparam("b_state"),
        next_attempt_at=bindparam("b_next"),  # a given-up row is never claimed again
        last_status=bindparam("b_status"),
        error_code=bindparam("b_code"),
        error_message=bindparam("b_message"),
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


def claim_due(
    session: Session, *, limit: int, lease_seconds: float, now: datetime | None = None
) -> list[Due]:
    """Take up to ``limit`` due deliveries for one attempt each (count it, push the next try past the
    lease). Rows another loop holds are skipped, not waited for."""
    now = now or utcnow()
    until = now + timedelta(seconds=lease_seconds)
    rows = session.execute(_CLAIM, {"now": now, "limit": limit, "lease_until": until}).all()
    return [Due(row.id, row.event, row.url, row.body, row.attempts) for row in rows]


def retry_delay(attempts: int, *, base: float, cap: float) -> float:
    """Seconds before the next attempt after ``attempts`` tries: ``base * 2**(attempts-1)``, capped,
    with +-20 % jitter so a receiver that comes back is not hit by every delivery at once."""
    return min(cap, base * 2 ** max(0, attempts - 1)) * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class Outcome:
    """How one claimed attempt ended: delivered (``code`` None), retry in ``retry_in`` seconds, or
    (``code`` set, ``retry_in`` None) given up."""

    id: uuid.UUID
    status: int | None  # the HTTP status, when there was an answer
    code: str | None = None
    message: str = ""
    retry_in: float | None = None


def settle(session: Session, outcomes: Sequence[Outcome], *, now: datetime | None = None) -> int:
    """Record a round's outcomes in a bounded number of statements, whatever their number: one
    UPDATE per distinct 2xx status for the delivered rows (``WHERE id IN (...)``; one in practice),
    one executemany for the failed attempts. Only rows still pending change (a row redelivered or
    settled by another loop meanwhile is left alone). Returns how many rows changed."""
    now = now or utcnow()
    changed = 0
    delivered: dict[int | None, list[uuid.UUID]] = {}
    failed: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.code is None:
            delivered.setdefault(outcome.status, []).append(outcome.id)
        else:
            give_up = outcome.retry_in is None
            failed.append(
                {
                    "b_id": outcome.id,
                    "b_state": "failed" if give_up else "pending",
                    "b_next": now if give_up else now + timedelta(seconds=outcome.retry_in or 0.0),
                    "b_status": outcome.status,
                    "b_code": outcome.code,
                    "b_message": outcome.message[:2000],
                    "b_now": now,
                }
            )
    for status, ids in sorted(delivered.items(), key=lambda item: item[0] or 0):
        result = session.execute(_DELIVERED, {"ids": ids, "now": now, "status": status})
        changed += result.rowcount  # type: ignore[attr-defined]
    if failed:
        result = session.execute(_FAILED, failed)
        changed += result.rowcount  # type: ignore[attr-defined]
    return changed


def redeliver(session: Session, delivery_id: uuid.UUID) -> bool:
    """Send a delivery again now, with a fresh set of attempts (also a delivered or given-up one)."""
    now = utcnow()
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(state="pending", attempts=0, next_attempt_at=now, delivered_at=None, updated_at=now)
        .returning(WebhookDelivery.id),
        execution_options={"synchronize_session": False},
    )
    found = result.first() is not None
    if found:
        notify(session, CHANNEL)
    return found


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
