"""Training runs, the model versions they produce, and the promotions that choose the serving one."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import FINAL_RUN_STATES, PROMOTION_REASONS, RUN_STATES, Base, BigIntId, one_of


class TrainingRun(Base):
    """A fine-tuning run. ``progress`` is rewritten as it goes (epoch, step, loss, eval metrics)."""

    __tablename__ = "training_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    state: Mapped[str] = mapped_column(String(16), default="queued", server_default=text("'queued'"))
    data_path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any] | None] = mapped_column()
    progress: Mapped[dict[str, Any] | None] = mapped_column()
    metrics: Mapped[dict[str, Any] | None] = mapped_column()
    output_dir: Mapped[str | None] = mapped_column(Text)
    report_path: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    worker: Mapped[str | None] = mapped_column(String(255))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        CheckConstraint(one_of("state", RUN_STATES), name="state_valid"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint("(state = 'failed') = (error_code IS NOT NULL)", name="failed_iff_error_code"),
        CheckConstraint(
            f"NOT ({one_of('state', FINAL_RUN_STATES)}) OR finished_at IS NOT NULL",
            name="final_has_finished_at",
        ),
        Index("ix_training_runs_state_created_at", "state", "created_at"),
    )


class ModelVersion(Base):
    """A model that can serve: where it came from, what it was trained on, how it scored."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)
    training_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL")
    )
    data_fingerprint: Mapped[str | None] = mapped_column(String(128))
    params: Mapped[dict[str, Any] | None] = mapped_column()
    metrics: Mapped[dict[str, Any] | None] = mapped_column()
    threshold: Mapped[float | None] = mapped_column(Float)
    # Where ``threshold`` was measured: the road (faces mode, detector, margin, face limits, runtime,
    # judge version) and the data, split and target FPR (worker/training/calibrate.py).
    calibration: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("threshold IS NULL OR (threshold >= 0 AND threshold <= 1)", name="threshold_range"),
    )


class Promotion(Base):
    """One change of the serving model. The latest row (highest id) names the current model; a row
    without a version means the default model (DFSCAN_MODEL, DFSCAN_THRESHOLD)."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    version: Mapped[str | None] = mapped_column(ForeignKey("model_versions.version"))
    previous_version: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint(one_of("reason", PROMOTION_REASONS), name="reason_valid"),)
