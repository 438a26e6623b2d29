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
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, training
from dfscan.outbox import queue_depth, relay_unsent, send_jobs
from dfscan.queueing import TRAIN_TASK, TRAINING_QUEUE
from dfscan.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    relayed: int
    resent: int
    failed: int
    runs: int = 0


def messages_missing(session: Session, broker_url: str) -> bool:
    """Whether the broker holds fewer scan messages (waiting or reserved) than Postgres has queued jobs.

    A deep, healthy backlog keeps jobs queued far past any lease; re-sending them all would only
    double the queue. When messages really are gone (a flushed or restarted Redis without
    persistence), the broker's count falls below the database's, and queued jobs are re-sent.
    """
    queued = jobs.count_sent_queued(session)
    if not queued:
        return False
    return queue_depth(broker_url, include_reserved=True) < queued


def sweep_once(app: Celery, sessions: sessionmaker[Session], settings: Settings) -> SweepReport:
    relayed = relay_unsent(app, sessions, per_message=settings.jobs_per_message)
    with sessions.begin() as session:
        resend_ids, failed_ids = jobs.sweep_stale(
            session,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            include_queued=messages_missing(session, settings.broker_url),
        )
        pending = jobs.priorities(session, resend_ids)
    resent = send_jobs(app, sessions, pending, per_message=settings.jobs_per_message) if pending else 0
    with sessions() as session:
        runs = training.stale_runs(session, lease_seconds=settings.lease_seconds)
    for run_id in runs:  # the training task claims a stale run only once its heartbeat is old
        app.send_task(TRAIN_TASK, kwargs={"run_id": str(run_id)}, queue=TRAINING_QUEUE, task_id=str(run_id))
    report = SweepReport(relayed=relayed, resent=resent, failed=len(failed_ids), runs=len(runs))
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
