"""Verdicts carry what the source declares about its origin: ``provenance``, a JSON object (C2PA
manifest and signature check, IPTC digital source type, EXIF software; dfscan.verdicts.Provenance),
a second model's opinion, ``second_opinion`` (its score and the combined reading), and the
explanation heatmaps asked for, ``explanation`` (a grid of floats per judged region).

Existing verdicts get NULL (not read).

Revision ID: 0012
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("provenance", _JSON, nullable=True))
        batch.add_column(sa.Column("second_opinion", _JSON, nullable=True))
        batch.add_column(sa.Column("explanation", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("explanation")
        batch.drop_column("second_opinion")
        batch.drop_column("provenance")
