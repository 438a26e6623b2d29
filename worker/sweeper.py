"""The sweeper: Postgres is the truth, so jobs whose message or worker was lost are sent again.

Each sweep (every ``DFSCAN_SWEEP_INTERVAL`` seconds, from ``dfscan sweeper`` or a thread of
``dfscan worker --sweeper``; several sweepers are safe, every change is a guarded UPDATE):

1. sends messages for jobs written but never sent (the producer's outbox);
2. re-sends jobs stuck ``queued`` or ``running`` past their lease (a flushed Redis, a worker killed
   while the broker was down) and fails those out of attempts with ``MAX_ATTEMPTS``.

Re-sending a job whose message still exists only costs a duplicate message: the claim guard makes
the second delivery a no-op, and the schema allows one verdict per job.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from db.models import ScanJob
from dfscan.settings import Settings
from producer.outbox import relay_unsent, send_jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    relayed: int
    resent: int
    failed: int


def sweep_once(app: Celery, sessions: sessionmaker[Session], settings: Settings) -> SweepReport:
    relayed = relay_unsent(app, sessions)
    with sessions.begin() as session:
        resend_ids, failed_ids = jobs.sweep_stale(
            session, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts
        )
        pending: list[tuple[uuid.UUID, int]] = []
        if resend_ids:
            rows = session.execute(select(ScanJob.id, ScanJob.priority).where(ScanJob.id.in_(resend_ids)))
            pending = [(row.id, row.priority) for row in rows]
    resent = send_jobs(app, sessions, pending) if pending else 0
    report = SweepReport(relayed=relayed, resent=resent, failed=len(failed_ids))
    if relayed or resent or failed_ids:
        log.info("sweep: relayed %d unsent, re-sent %d stale, failed %d", relayed, resent, len(failed_ids))
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
