"""Training runs: queue, claim, report progress, cancel, finish.

Like scan jobs, every transition is guarded in the WHERE clause, so a redelivered training task
cannot run a finished run again. Cancellation is cooperative: ``request_cancel`` sets a flag that the
training loop polls with ``is_cancel_requested`` between steps; a run still queued is cancelled at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from db.models import FINAL_RUN_STATES, TrainingRun, utcnow

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")


def create_run(
    session: Session,
    *,
    data_path: str,
    base_model: str,
    params: dict[str, Any] | None = None,
    output_dir: str | None = None,
) -> TrainingRun:
    """A queued training run."""
    run = TrainingRun(
        id=uuid.uuid4(), data_path=data_path, base_model=base_model, params=params, output_dir=output_dir
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: uuid.UUID) -> TrainingRun | None:
    """The run as it is in the database now."""
    return session.get(TrainingRun, run_id, populate_existing=True)


def list_runs(session: Session, *, state: str | None = None, limit: int = 50) -> list[TrainingRun]:
    """Runs, newest first, optionally only those in ``state``."""
    query = select(TrainingRun).order_by(TrainingRun.created_at.desc(), TrainingRun.id).limit(limit)
    if state is not None:
        query = query.where(TrainingRun.state == state)
    return list(session.scalars(query))


def _guarded(session: Session, run_id: uuid.UUID, states: Sequence[str], *where: Any, **values: Any) -> bool:
    result = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.state.in_(list(states)), *where)
        .values(updated_at=utcnow(), **values)
        .returning(TrainingRun.id),
        execution_options={"synchronize_session": False},
    )
    return result.first() is not None


def claim_run(
    session: Session, run_id: uuid.UUID, *, worker: str, lease_seconds: int | None = None
) -> TrainingRun | None:
    """Mark a run running for ``worker``; None if someone else holds it or it is final (a redelivery).

    A queued run is claimed. With ``lease_seconds``, so is a running run whose worker has not
    shown a sign of life (``heartbeat``) for that long: the worker died and this one resumes it
    from its last checkpoint.
    """
    now = utcnow()
    claimable = TrainingRun.state == "queued"
    states: tuple[str, ...] = ("queued",)
    if lease_seconds is not None:
        states = ("queued", "running")
        stale = now - timedelta(seconds=lease_seconds)
        claimable = or_(claimable, and_(TrainingRun.state == "running", TrainingRun.updated_at < stale))
    claimed = _guarded(
        session,
        run_id,
        states,
        claimable,
        TrainingRun.cancel_requested.is_(False),
        state="running",
        worker=worker,
        started_at=now,
        attempts=TrainingRun.attempts + 1,
    )
    return get_run(session, run_id) if claimed else None


def heartbeat(session: Session, run_id: uuid.UUID) -> bool:
    """The running run's worker is alive (refreshes ``updated_at``); False if the run is not running."""
    return _guarded(session, run_id, ("running",))


def stale_runs(session: Session, *, lease_seconds: int) -> list[uuid.UUID]:
    """Runs whose message or worker was lost: queued or running with no change for ``lease_seconds``."""
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    query = select(TrainingRun.id).where(
        TrainingRun.state.in_(ACTIVE),
        TrainingRun.updated_at < cutoff,
        TrainingRun.cancel_requested.is_(False),
    )
    return list(session.scalars(query))


def update_progress(session: Session, run_id: uuid.UUID, progress: dict[str, Any]) -> bool:
    """Replace the run's progress (epoch, step, loss, eval metrics); False if it is not running."""
    return _guarded(session, run_id, ("running",), progress=progress)


def request_cancel(session: Session, run_id: uuid.UUID) -> bool:
    """Ask the run to stop. A queued run is cancelled at once. False if the run is already final."""
    now = utcnow()
    if _guarded(session, run_id, ("queued",), state="cancelled", cancel_requested=True, finished_at=now):
        log.info("training run %s cancelled before it started", run_id, extra={"run_id": str(run_id)})
        return True
    return _guarded(session, run_id, ("running",), cancel_requested=True)


def is_cancel_requested(session: Session, run_id: uuid.UUID) -> bool:
    """Whether an operator asked the run to stop (True also for a run that no longer exists)."""
    flag = session.scalars(select(TrainingRun.cancel_requested).where(TrainingRun.id == run_id)).first()
    return True if flag is None else bool(flag)


def finish_run(
    session: Session,
    run_id: uuid.UUID,
    *,
    state: str,
    metrics: dict[str, Any] | None = None,
    report_path: str | None = None,
    model_version: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Record the end of a run: done, failed (with ``error_code``) or cancelled.

    False if the run was already final. ``error_code`` is required for, and only for, ``failed``.
    """
    if state not in FINAL_RUN_STATES:
        raise ValueError(f"finish_run state must be one of {FINAL_RUN_STATES}, not {state!r}")
    if (state == "failed") != (error_code is not None):
        raise ValueError("error_code is required for a failed run and must be None otherwise")
    values: dict[str, Any] = {
        "state": state,
        "finished_at": utcnow(),
        "error_code": error_code,
        "error_message": error_message,
    }
    if metrics is not None:
        values["metrics"] = metrics
    if report_path is not None:
        values["report_path"] = report_path
    if model_version is not None:
        values["model_version"] = model_version
    finished = _guarded(session, run_id, ACTIVE, **values)
    if finished:
        log.info("training run %s %s", run_id, state, extra={"run_id": str(run_id)})
    return finished
