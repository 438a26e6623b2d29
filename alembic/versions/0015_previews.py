"""verdict_previews: small JPEGs of what a verdict judged (a still image's preview, a clip's frame
thumbnails) for the review console, kept with the verdict when the original bytes are gone.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "verdict_previews",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("t", sa.Float(), nullable=True),
        sa.Column("jpeg", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("seq >= 0 AND seq < 16", name=op.f("ck_verdict_previews_seq_range")),
        sa.CheckConstraint("length(jpeg) <= 65536", name=op.f("ck_verdict_previews_jpeg_size")),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["verdicts.job_id"],
            name=op.f("fk_verdict_previews_job_id_verdicts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("pk_verdict_previews")),
    )


def downgrade() -> None:
    op.drop_table("verdict_previews")
