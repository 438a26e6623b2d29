"""The model registry: versions that can serve, and the history of which one does.

``promotions`` is an append-only log; the latest row names the serving model. A rollback appends a
row too (``reason='rollback'``), so the log always says who served when. Rolling back replays the
log as a stack (promote pushes, rollback pops), so repeated rollbacks walk back through history
(C -> B -> A -> the default) instead of toggling between the last two versions.

The bottom of the stack is always the default model (``DFSCAN_MODEL`` with ``DFSCAN_THRESHOLD``),
written as a row whose ``version`` is NULL: ``promote_default`` pushes it (``reason='default'``), and a
rollback past the first promotion lands on it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ModelVersion, Promotion
from dfscan.exceptions import NothingToRollBackError, UnknownIdError

log = logging.getLogger(__name__)


def register_version(
    session: Session,
    version: str,
    *,
    source: str,
    base_model: str | None = None,
    path: str | None = None,
    training_run_id: uuid.UUID | None = None,
    data_fingerprint: str | None = None,
    params: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    threshold: float | None = None,
    calibration: dict[str, Any] | None = None,
) -> ModelVersion:
    """Add a model version. A version name is registered once; a second time raises ``ValueError``."""
    if session.get(ModelVersion, version) is not None:
        raise ValueError(f"model version {version!r} is already registered; pick a new version name")
    row = ModelVersion(
        version=version,
        source=source,
        base_model=base_model,
        path=path,
        training_run_id=training_run_id,
        data_fingerprint=data_fingerprint,
        params=params,
        metrics=metrics,
        threshold=threshold,
        calibration=calibration,
    )
    session.add(row)
    session.flush()
    return row


def set_calibration(
    session: Session, version: str, threshold: float | None, calibration: dict[str, Any]
) -> ModelVersion:
    """Store a version's re-measured threshold and where it was measured (its calibration road)."""
    row = session.get(ModelVersion, version)
    if row is None:
        raise UnknownIdError(f"model version {version!r} is not registered")
    row.threshold = threshold
    row.calibration = calibration
    session.flush()
    log.info("calibrated model %s: threshold %s", version, threshold, extra={"model_version": version})
    return row


def get_version(session: Session, version: str) -> ModelVersion | None:
    return session.get(ModelVersion, version)


def list_versions(session: Session) -> list[ModelVersion]:
    """Every registered version, newest first."""
    return list(
        session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.version))
    )


def promotion_history(session: Session) -> list[Promotion]:
    """Every promotion and rollback, oldest first."""
    return list(session.scalars(select(Promotion).order_by(Promotion.id)))


def current_version(session: Session) -> ModelVersion | None:
    """The serving model version (latest promotion), or None when the default model (DFSCAN_MODEL)
    serves: nothing was ever promoted, or the latest row points back at the default."""
    latest = session.scalars(select(Promotion).order_by(Promotion.id.desc()).limit(1)).first()
    return session.get(ModelVersion, latest.version) if latest and latest.version else None


def promote(session: Session, version: str) -> Promotion:
    """Make ``version`` the serving model. UNKNOWN_ID (a LookupError) for an unregistered version."""
    if session.get(ModelVersion, version) is None:
        raise UnknownIdError(f"model version {version!r} is not registered; register it before promoting")
    current = current_version(session)
    row = Promotion(version=version, previous_version=current.version if current else None, reason="promote")
    session.add(row)
    session.flush()
    log.info("promoted model %s (was %s)", version, row.previous_version, extra={"model_version": version})
    return row


def promote_default(session: Session) -> Promotion | None:
    """Serve the default model (DFSCAN_MODEL) again; None when it already serves (nothing written)."""
    current = current_version(session)
    if current is None:
        return None
    row = Promotion(version=None, previous_version=current.version, reason="default")
    session.add(row)
    session.flush()
    log.info("promoted the default model (was %s)", current.version, extra={"model_version": None})
    return row


def rollback(session: Session) -> Promotion:
    """Serve what served before the current model: an earlier version, or after the first promotion
    the default model (a row with ``version`` None). NOTHING_TO_ROLL_BACK (a LookupError) when the
    default already serves and no history is left to walk back."""
    stack: list[str | None] = [None]  # the default model is always at the bottom
    for row in promotion_history(session):
        if row.reason == "rollback":
            if len(stack) > 1:
                stack.pop()
        else:
            stack.append(row.version)
    if len(stack) < 2:
        raise NothingToRollBackError(
            "nothing to roll back to: the default model (DFSCAN_MODEL) already serves"
        )
    current, target = stack[-1], stack[-2]
    row = Promotion(version=target, previous_version=current, reason="rollback")
    session.add(row)
    session.flush()
    log.info("rolled back model %s -> %s", current, target, extra={"model_version": target})
    return row
