"""The registry can point back at DFSCAN_MODEL: a promotion row with no version means the default model.

`dfscan models promote --default` appends ``reason='default'`` with ``version`` NULL, and a rollback
that reaches the bottom of the history appends ``reason='rollback'`` with ``version`` NULL; workers
then serve DFSCAN_MODEL (with DFSCAN_THRESHOLD). Downgrading deletes those rows first.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.alter_column("version", existing_type=sa.String(length=255), nullable=True)
        batch.drop_constraint(op.f("ck_promotions_reason_valid"), type_="check")
        batch.create_check_constraint(op.f("ck_promotions_reason_valid"), "reason IN ('promote', 'rollback', 'default')")


def downgrade() -> None:
    op.execute("DELETE FROM promotions WHERE version IS NULL OR reason = 'default'")
    with op.batch_alter_table("promotions") as batch:
        batch.drop_constraint(op.f("ck_promotions_reason_valid"), type_="check")
        batch.create_check_constraint(op.f("ck_promotions_reason_valid"), "reason IN ('promote', 'rollback')")
        batch.alter_column("version", existing_type=sa.String(length=255), nullable=False)
