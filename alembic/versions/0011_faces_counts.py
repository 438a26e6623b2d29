"""Verdicts say how many faces were found and judged and why the others were skipped; a model version
records where its threshold was measured (its calibration road).

Existing verdicts have no counts (NULL, as verdicts judged with faces off). The check constraint is
added in batch mode, so SQLite (which cannot ALTER a constraint in) recreates the table.

Revision ID: 0011
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("faces_found", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("faces_judged", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("faces_skipped", _JSON, nullable=True))
        batch.create_check_constraint(
            "faces_judged_of_found",
            "faces_judged IS NULL OR (faces_judged >= 0 AND faces_judged <= faces_found)",
        )
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("calibration", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("calibration")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_constraint("faces_judged_of_found", type_="check")
        batch.drop_column("faces_skipped")
        batch.drop_column("faces_judged")
        batch.drop_column("faces_found")
