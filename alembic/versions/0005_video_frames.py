"""Videos: verdicts say what they judged (image or video), a video's duration and peak time, and
verdict_frames keeps every sampled frame's time and p(fake) beside its verdict.

Existing verdicts are images (server default 'image'). Check constraints are added in batch mode, so
SQLite (which cannot ALTER a constraint in) recreates the table.

Revision ID: 0005
Revises: 0004 (written against 0001; chained after 0004 at the merge)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(
            sa.Column("media", sa.String(length=8), server_default=sa.text("'image'"), nullable=False)
        )
        batch.add_column(sa.Column("duration_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("peak_t", sa.Float(), nullable=True))
        batch.create_check_constraint("media_valid", "media IN ('image', 'video')")
        batch.create_check_constraint(
            "image_has_no_timeline", "media = 'video' OR (duration_s IS NULL AND peak_t IS NULL)"
        )
    op.create_table(
        "verdict_frames",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("t", sa.Float(), nullable=False),
        sa.Column("fake_score", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "fake_score >= 0 AND fake_score <= 1", name=op.f("ck_verdict_frames_fake_score_range")
        ),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_verdict_frames_seq_nonnegative")),
        sa.CheckConstraint("t >= 0", name=op.f("ck_verdict_frames_t_nonnegative")),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["verdicts.job_id"],
            name=op.f("fk_verdict_frames_job_id_verdicts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("pk_verdict_frames")),
    )


def downgrade() -> None:
    op.drop_table("verdict_frames")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_constraint("image_has_no_timeline", type_="check")
        batch.drop_constraint("media_valid", type_="check")
        batch.drop_column("peak_t")
        batch.drop_column("duration_s")
        batch.drop_column("media")
