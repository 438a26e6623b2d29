"""The sweeper: Postgres is the truth, so jobs whose message or worker was lost are sent again.

Each sweep (every ``DFSCAN_SWEEP_INTERVAL`` seconds, from ``dfscan sweeper`` or a thread of
``dfscan worker --sweeper``; several sweepers are safe, every change is a guarded UPDATE):

1. sends messages for jobs written but never sent (the producer's outbox);
2. re-sends jobs stuck ``queued`` or ``running`` past their lease (a flushed Redis, a worker killed
   while the broker was down) and fails those out of attempts with ``MAX_ATTEMPTS``;
3. deletes webhook events delivered or given up more than ``DFSCAN_WEBHOOK_RETENTION_DAYS`` ago, in
   batches (``db.webhooks.prune_settled``), so the outbox holds the retention window, not history;
4. deletes expired ``uploads`` rows (each tenant's hold on uploaded bytes), except those of jobs still
   queued or running, then the stored bytes older than ``DFSCAN_UPLOAD_RETENTION_HOURS`` that no row
   holds (verdicts stay).

Re-sending a job whose message still exists only costs a duplicate message: the claim guard makes
the second delivery a no-op, and the schema allows one verdict per job.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, training, uploads, webhooks
from db.models import utcnow
from dfscan.outbox import queued_job_ids, relay_unsent, send_jobs
from dfscan.queueing import TRAIN_TASK, TRAINING_QUEUE
from dfscan.settings import Settings
from dfscan.uploads import new_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    relayed: int
    resent: int
    failed: int
    runs: int = 0
    pruned: int = 0
    uploads_deleted: int = 0


# Webhook events deleted per statement, and statements per sweep at most (the rest: next sweep).
PRUNE_BATCH = 5000
PRUNE_BATCHES = 20


def prune_webhooks(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Delete settled webhook events older than the retention, a batch per transaction."""
    if settings.webhook_retention_days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=settings.webhook_retention_days)
    pruned = 0
    for _ in range(PRUNE_BATCHES):
        with sessions.begin() as session:
            n = webhooks.prune_settled(session, older_than=cutoff, limit=PRUNE_BATCH)
        pruned += n
        if n < PRUNE_BATCH:
            break
    return pruned


# Walking the upload store costs a directory listing: at most once per this many seconds (or half the
# retention, when that is shorter).
UPLOAD_SWEEP_EVERY = 600.0
_last_upload_sweep = 0.0


def prune_uploads(sessions: sessionmaker[Session], settings: Settings, *, force: bool = False) -> int:
    """Retention by row: delete the expired ``uploads`` rows (a tenant's hold ends), except those a queued
    or running job of the tenant still reads; then delete the stored bytes older than
    DFSCAN_UPLOAD_RETENTION_HOURS that no row holds (another tenant's row keeps shared bytes) and no
    active job reads. Returns how many stored uploads were deleted."""
    global _last_upload_sweep
    retention = settings.upload_retention_hours * 3600
    if retention <= 0:
        return 0
    now = time.monotonic()
    if not force and now - _last_upload_sweep < min(UPLOAD_SWEEP_EVERY, retention / 2):
        return 0
    _last_upload_sweep = now
    expired = 0
    for _ in range(PRUNE_BATCHES):
        with sessions.begin() as session:
            n = uploads.expire(session, limit=PRUNE_BATCH)
        expired += n
        if n < PRUNE_BATCH:
            break
    store = new_store(settings.upload_store)
    old = store.stale(retention)
    if not old:
        return 0
    with sessions() as session:
        keep = uploads.held_digests(session, old) | jobs.active_upload_digests(session)
    # Re-checked as each is deleted: bytes uploaded again since stale() looked are kept.
    deleted = [digest for digest in old if digest not in keep and store.delete(digest, retention)]
    if expired:
        log.info("%d upload holds expired", expired)
    if deleted:
        log.info("deleted %d uploads older than %g h", len(deleted), settings.upload_retention_hours)
    return len(deleted)


def lost_queued_jobs(session: Session, broker_url: str, *, lease_seconds: int) -> list[uuid.UUID] | bool:
    """The queued jobs, sent at least ``lease_seconds`` ago, that no scan message in the broker names.

    Compared per job, not per message: a message may carry up to ``DFSCAN_JOBS_PER_MESSAGE`` jobs,
    so a healthy backlog of 400 jobs in 50 messages must not look like 350 lost messages (it did:
    the backlog was re-sent every lease and doubled). A deep, healthy backlog keeps jobs queued far
    past any lease; only jobs whose message really is gone (a flushed Redis, a restart without
    persistence) come back. Returns their ids, or True when every stale queued job is lost (for
    ``jobs.sweep_stale``'s ``include_queued``). The broker is read before Postgres, so a message
    consumed in between shows up as a job that is running, not as a lost one; the remaining races
    only cost a duplicate message, which the claim guard turns into a no-op.
    """
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    if not jobs.count_sent_queued(session, older_than=cutoff):
        return []  # the common case costs one count, not a read of the broker
    held = queued_job_ids(broker_url)
    stale = jobs.sent_queued_ids(session, older_than=cutoff)
    lost = [job_id for job_id in stale if job_id not in held]
    # All of them (a flushed Redis): let the sweep select them itself rather than send a huge IN list.
    return True if lost and len(lost) == len(stale) else lost


def sweep_once(app: Celery, sessions: sessionmaker[Session], settings: Settings) -> SweepReport:
    relayed = relay_unsent(
        app, sessions, per_message=settings.jobs_per_message, fair_share=settings.fair_share
    )
    with sessions.begin() as session:
        resend_ids, failed_ids = jobs.sweep_stale(
            session,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            include_queued=lost_queued_jobs(
                session, settings.broker_url, lease_seconds=settings.lease_seconds
            ),
        )
        pending = jobs.priorities(session, resend_ids)
    resent = (
        send_jobs(
            app, sessions, pending, per_message=settings.jobs_per_message, fair_share=settings.fair_share
        )
        if pending
        else 0
    )
    with sessions() as session:
        runs = training.stale_runs(session, lease_seconds=settings.lease_seconds)
    for run_id in runs:  # the training task claims a stale run only once its heartbeat is old
        app.send_task(TRAIN_TASK, kwargs={"run_id": str(run_id)}, queue=TRAINING_QUEUE, task_id=str(run_id))
    pruned = prune_webhooks(sessions, settings)
    uploads_deleted = prune_uploads(sessions, settings)
    report = SweepReport(
        relayed=relayed,
        resent=resent,
        failed=len(failed_ids),
        runs=len(runs),
        pruned=pruned,
        uploads_deleted=uploads_deleted,
    )
    if relayed or resent or failed_ids or pruned:
        log.info(
            "sweep: relayed %d unsent, re-sent %d stale, failed %d, pruned %d webhook events",
            relayed,
            resent,
            len(failed_ids),
            pruned,
        )
    return report


def run_sweeper(
    app: Celery, sessions: sessionmaker[Session], settings: Settings, stop: threading.Event
) -> None:
    """Sweep until ``stop`` is set; a database or broker outage is logged and tried again later."""
    while not stop.is_set():
        try:
            sweep_once(app, sessions, settings)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("sweep skipped, will try again: %s", exc)
        except Exception:
            log.exception("sweep failed, will try again")
        stop.wait(settings.sweep_interval)
