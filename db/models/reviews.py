"""Human review decisions on verdicts; the latest decision per job counts, history is kept."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import Base, BigIntId, one_of

REVIEW_DECISIONS = ("fake", "real", "not_applicable", "escalate")


class Review(Base):
    """One reviewer's decision on a job's verdict. Every decision is kept (the history); the latest (highest
    ``id``) counts. ``api_key_id`` is the key the reviewer signed in with (NULL once that key is deleted: the
    decision outlives it); ``tenant_id`` is the job's tenant, copied so a tenant's reviews are read by index."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    decision: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(one_of("decision", REVIEW_DECISIONS), name="decision_valid"),
        CheckConstraint("note IS NULL OR length(note) <= 2000", name="note_length"),
        # The latest decision of a job: the last entry of (job_id, id).
        Index("ix_reviews_job_id_id", "job_id", "id"),
        # Export and agreement: a tenant's decisions by time.
        Index("ix_reviews_tenant_id_created_at", "tenant_id", "created_at"),
    )
