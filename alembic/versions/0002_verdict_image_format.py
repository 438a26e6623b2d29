"""Verdicts record the format their bytes were decoded as (JPEG, PNG, WEBP, HEIF, ...).

The first migration after the initial schema, and the example to follow when a verdict gains a
field: the field on ``dfscan.verdicts.Verdict`` (and in ``STORED``), the column on
``db.models.Verdict``, and this file. Nullable, so rows written before it stay valid, and adding it
rewrites no table on PostgreSQL (a catalog-only change) however many verdicts exist.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 18:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("image_format", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("image_format")
