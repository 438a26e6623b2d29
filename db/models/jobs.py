"""Submissions and their scan jobs: one job row is the truth of where a job is."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import FINAL_JOB_STATES, JOB_STATES, Base, JsonType, one_of
from db.models.tenants import tenant_column


class Submission(Base):
    """One call to submit: a batch of sources that share a client reference and a priority."""

    __tablename__ = "submissions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = tenant_column()
    client_ref: Mapped[str | None] = mapped_column(String(255))
    # Unique within the tenant (two tenants may choose the same key).
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_jobs: Mapped[int] = mapped_column(Integer)
    # Where to POST events (untrusted: the SSRF guard applies at delivery) and which ones,
    # comma-separated names from WEBHOOK_EVENTS.
    callback_url: Mapped[str | None] = mapped_column(Text)
    callback_events: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("n_jobs >= 0", name="n_jobs_nonnegative"),
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_submissions_tenant_id", "tenant_id"),
    )


class ScanJob(Base):
    """One source to scan. ``enqueued_at IS NULL`` means its message was not sent yet (the outbox)."""

    __tablename__ = "scan_jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    submission_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = tenant_column()
    # The API key that submitted it over HTTP (NULL from ScanClient, the CLI, foreign messages).
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    seq: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    client_ref: Mapped[str | None] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # What the submission asked of the judge beyond the worker's settings (dfscan/options.py:
    # ``{"explain": true, "faces": "off"}``); NULL: the worker's settings.
    options: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    state: Mapped[str] = mapped_column(String(16), default="queued", server_default=text("'queued'"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None] = mapped_column()
    enqueued_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("submission_id", "seq"),
        CheckConstraint(one_of("state", JOB_STATES), name="state_valid"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint("(state = 'failed') = (error_code IS NOT NULL)", name="failed_iff_error_code"),
        CheckConstraint(
            f"NOT ({one_of('state', FINAL_JOB_STATES)}) OR finished_at IS NOT NULL",
            name="final_has_finished_at",
        ),
        Index("ix_scan_jobs_submission_id_state", "submission_id", "state"),
        Index("ix_scan_jobs_state_lease_until", "state", "lease_until"),
        Index("ix_scan_jobs_tenant_id_created_at", "tenant_id", "created_at"),
        # A key's jobs outstanding (its quota). Partial: only the backlog is indexed.
        Index(
            "ix_scan_jobs_api_key_id_active",
            "api_key_id",
            postgresql_where=text("state IN ('queued', 'running')"),
            sqlite_where=text("state IN ('queued', 'running')"),
        ),
        # A tenant's jobs outstanding (its fair-share step, dfscan.queueing.fair_level). Partial.
        Index(
            "ix_scan_jobs_tenant_id_active",
            "tenant_id",
            postgresql_where=text("state IN ('queued', 'running')"),
            sqlite_where=text("state IN ('queued', 'running')"),
        ),
        # The outbox: jobs whose message still has to be sent. Partial, so it stays tiny.
        Index(
            "ix_scan_jobs_unsent",
            "created_at",
            postgresql_where=text("enqueued_at IS NULL AND state = 'queued'"),
            sqlite_where=text("enqueued_at IS NULL AND state = 'queued'"),
        ),
    )


# The review queue: a tenant's done jobs newest first, read backwards by keyset (created_at, id). Partial,
# so queued and failed jobs do not weigh on it.
Index(
    "ix_scan_jobs_review_queue",
    ScanJob.tenant_id,
    ScanJob.created_at,
    ScanJob.id,
    postgresql_where=text("state = 'done'"),
    sqlite_where=text("state = 'done'"),
)
