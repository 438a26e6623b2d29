"""Faces: a verdict says what it was judged on, may be not_applicable, and keeps one row per judged face.

- ``verdicts.judged_on`` (``faces`` or ``image``; existing rows are ``image``);
- ``verdicts.label`` may be ``not_applicable`` (``DFSCAN_FACES=require`` and no face), and then
  ``fake_score`` is NULL (a CHECK ties the two);
- ``verdict_faces``: box, detector score and p(fake) of each judged face, keyed by the verdict's job.

Batch mode so SQLite (``dfscan scan``) can take the ALTERs: it rebuilds the table there; PostgreSQL
alters in place.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(
            sa.Column("judged_on", sa.String(length=8), server_default=sa.text("'image'"), nullable=False)
        )
        batch.alter_column(
            "label", existing_type=sa.String(length=8), type_=sa.String(length=16), existing_nullable=False
        )
        batch.alter_column("fake_score", existing_type=sa.Float(), nullable=True)
        batch.drop_constraint(op.f("ck_verdicts_label_valid"), type_="check")
        batch.create_check_constraint(
            op.f("ck_verdicts_label_valid"), "label IN ('real', 'fake', 'not_applicable')"
        )
        batch.create_check_constraint(
            op.f("ck_verdicts_not_applicable_iff_no_score"),
            "(label = 'not_applicable') = (fake_score IS NULL)",
        )
        batch.create_check_constraint(op.f("ck_verdicts_judged_on_valid"), "judged_on IN ('faces', 'image')")
    op.create_table(
        "verdict_faces",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("y", sa.Integer(), nullable=False),
        sa.Column("w", sa.Integer(), nullable=False),
        sa.Column("h", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("fake_score", sa.Float(), nullable=False),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_verdict_faces_seq_nonnegative")),
        sa.CheckConstraint("x >= 0 AND y >= 0 AND w > 0 AND h > 0", name=op.f("ck_verdict_faces_box_valid")),
        sa.CheckConstraint("score >= 0 AND score <= 1", name=op.f("ck_verdict_faces_score_range")),
        sa.CheckConstraint(
            "fake_score >= 0 AND fake_score <= 1", name=op.f("ck_verdict_faces_fake_score_range")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["verdicts.job_id"], name=op.f("fk_verdict_faces_job_id_verdicts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdict_faces")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_verdict_faces_job_id_seq")),
    )


def downgrade() -> None:
    op.drop_table("verdict_faces")
    op.execute("DELETE FROM verdicts WHERE label = 'not_applicable'")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_constraint(op.f("ck_verdicts_judged_on_valid"), type_="check")
        batch.drop_constraint(op.f("ck_verdicts_not_applicable_iff_no_score"), type_="check")
        batch.drop_constraint(op.f("ck_verdicts_label_valid"), type_="check")
        batch.create_check_constraint(op.f("ck_verdicts_label_valid"), "label IN ('real', 'fake')")
        batch.alter_column("fake_score", existing_type=sa.Float(), nullable=False)
        batch.alter_column(
            "label", existing_type=sa.String(length=16), type_=sa.String(length=8), existing_nullable=False
        )
        batch.drop_column("judged_on")
