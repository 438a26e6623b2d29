"""Webhook delivery: receivers, fencing tokens, and indexes that do not grow with history.

- ``webhook_deliveries.receiver``: the callback URL's ``scheme://host:port``, the unit of the
  delivery loop's per-receiver concurrency limit and circuit breaker. Existing rows get their whole
  URL (a finer key for old rows only; settled rows never need it); rows written by the previous
  release during a rolling update get '' (server default).
- ``webhook_deliveries.claim_token``: written by each claim, checked when the outcome is recorded, so
  a loop whose lease was taken over cannot record (or count) an attempt twice.
- Indexes: one receiver's due rows; given-up rows (the exporter counts them); settled rows by age
  (the retention sweep, ``DFSCAN_WEBHOOK_RETENTION_DAYS``).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("receiver", sa.Text(), nullable=True))
        batch.add_column(sa.Column("claim_token", sa.Uuid(), nullable=True))
    op.execute("UPDATE webhook_deliveries SET receiver = url")
    with op.batch_alter_table("webhook_deliveries") as batch:
        # A server default, so workers still running the previous release (a rolling update) can
        # write events: '' is one receiver for all of them until they are replaced.
        batch.alter_column("receiver", existing_type=sa.Text(), nullable=False, server_default=sa.text("''"))
    op.create_index(
        "ix_webhook_deliveries_receiver_due",
        "webhook_deliveries",
        ["receiver", "next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "ix_webhook_deliveries_failed",
        "webhook_deliveries",
        ["updated_at"],
        unique=False,
        postgresql_where=sa.text("state = 'failed'"),
        sqlite_where=sa.text("state = 'failed'"),
    )
    op.create_index(
        "ix_webhook_deliveries_state_updated_at", "webhook_deliveries", ["state", "updated_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_state_updated_at", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_failed", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_receiver_due", table_name="webhook_deliveries")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("claim_token")
        batch.drop_column("receiver")
