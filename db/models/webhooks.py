"""The webhook outbox: one row per event and receiver, delivered by the sweeper loops."""

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
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import DELIVERY_STATES, WEBHOOK_EVENTS, Base, one_of
from dfscan.webhooks import receiver_of


def _receiver_default(context: Any) -> str:
    """``receiver`` from the row's ``url`` when an INSERT leaves it out."""
    return receiver_of(str(context.get_current_parameters()["url"]))


class WebhookDelivery(Base):
    """One webhook event and its delivery (the webhook outbox).

    Written in the same transaction as the job's final state, so no event is lost to a crash between
    the two. ``id`` is the event id the receiver sees (``X-Dfscan-Event-Id``); ``body`` is the exact
    JSON sent on every attempt, so redeliveries carry the same bytes. ``dedupe_key`` makes a second
    write of the same event a no-op. A delivery loop claims due rows (``state = 'pending' AND
    next_attempt_at <= now()``) one ``receiver`` at a time, writes a fresh ``claim_token`` and pushes
    ``next_attempt_at`` past the attempt (the lease, renewed while the POST runs) first: a delivery
    process killed mid-POST leaves the row to be retried, and only the holder of the token records
    the attempt's outcome.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    submission_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    url: Mapped[str] = mapped_column(Text)
    # Who receives it: the URL's scheme://host:port, the unit of per-receiver limits and backoff.
    # '' from a writer older than migration 0007 (a rolling update): delivered, as one receiver.
    receiver: Mapped[str] = mapped_column(Text, default=_receiver_default, server_default=text("''"))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending", server_default=text("'pending'"))
    # Written by each claim; an outcome is recorded only by the claim that still holds it (fencing).
    claim_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        CheckConstraint(one_of("event", WEBHOOK_EVENTS), name="event_valid"),
        CheckConstraint(one_of("state", DELIVERY_STATES), name="state_valid"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint(
            "(state = 'delivered') = (delivered_at IS NOT NULL)", name="delivered_iff_delivered_at"
        ),
        Index("ix_webhook_deliveries_submission_id", "submission_id"),
        # What the delivery loop scans: due, pending rows. Partial, so it stays small.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
        # A claim takes one receiver's oldest due rows (partial: pending rows only).
        Index(
            "ix_webhook_deliveries_receiver_due",
            "receiver",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
        # Given-up rows, counted by the exporter: its cost follows them, not the delivered history.
        Index(
            "ix_webhook_deliveries_failed",
            "updated_at",
            postgresql_where=text("state = 'failed'"),
            sqlite_where=text("state = 'failed'"),
        ),
        # The retention sweep deletes settled rows oldest first.
        Index("ix_webhook_deliveries_state_updated_at", "state", "updated_at"),
    )
