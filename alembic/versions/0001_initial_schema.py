"""Initial schema: submissions, scan jobs, verdicts, training runs, the model registry.

Written by autogenerate against an empty PostgreSQL database, then read and adjusted: timestamp
defaults use ``sa.func.now()`` (``now()`` on Postgres, ``CURRENT_TIMESTAMP`` on SQLite) instead of
the Postgres-only text autogenerate writes.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 00:41:05.713154
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "submissions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("client_ref", sa.String(length=255), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("n_jobs", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("n_jobs >= 0", name=op.f("ck_submissions_n_jobs_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submissions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_submissions_idempotency_key")),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default=sa.text("'queued'"), nullable=False),
        sa.Column("data_path", sa.Text(), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "progress",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("output_dir", sa.Text(), nullable=True),
        sa.Column("report_path", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(length=255), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(state = 'failed') = (error_code IS NOT NULL)",
            name=op.f("ck_training_runs_failed_iff_error_code"),
        ),
        sa.CheckConstraint(
            "NOT (state IN ('done', 'failed', 'cancelled')) OR finished_at IS NOT NULL",
            name=op.f("ck_training_runs_final_has_finished_at"),
        ),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed', 'cancelled')",
            name=op.f("ck_training_runs_state_valid"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_training_runs_attempts_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_index(
        "ix_training_runs_state_created_at", "training_runs", ["state", "created_at"], unique=False
    )
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(length=255), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("training_run_id", sa.Uuid(), nullable=True),
        sa.Column("data_fingerprint", sa.String(length=128), nullable=True),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "threshold IS NULL OR (threshold >= 0 AND threshold <= 1)",
            name=op.f("ck_model_versions_threshold_range"),
        ),
        sa.ForeignKeyConstraint(
            ["training_run_id"],
            ["training_runs.id"],
            name=op.f("fk_model_versions_training_run_id_training_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
    )
    op.create_table(
        "scan_jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("submission_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("client_ref", sa.String(length=255), nullable=True),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("state", sa.String(length=16), server_default=sa.text("'queued'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(state = 'failed') = (error_code IS NOT NULL)", name=op.f("ck_scan_jobs_failed_iff_error_code")
        ),
        sa.CheckConstraint(
            "NOT (state IN ('done', 'failed')) OR finished_at IS NOT NULL",
            name=op.f("ck_scan_jobs_final_has_finished_at"),
        ),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed')", name=op.f("ck_scan_jobs_state_valid")
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_scan_jobs_attempts_nonnegative")),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_scan_jobs_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_jobs")),
        sa.UniqueConstraint("submission_id", "seq", name=op.f("uq_scan_jobs_submission_id_seq")),
    )
    op.create_index("ix_scan_jobs_state_lease_until", "scan_jobs", ["state", "lease_until"], unique=False)
    op.create_index("ix_scan_jobs_submission_id_state", "scan_jobs", ["submission_id", "state"], unique=False)
    op.create_index(
        "ix_scan_jobs_unsent",
        "scan_jobs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("enqueued_at IS NULL AND state = 'queued'"),
        sqlite_where=sa.text("enqueued_at IS NULL AND state = 'queued'"),
    )
    op.create_table(
        "promotions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("version", sa.String(length=255), nullable=False),
        sa.Column("previous_version", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("reason IN ('promote', 'rollback')", name=op.f("ck_promotions_reason_valid")),
        sa.ForeignKeyConstraint(
            ["version"], ["model_versions.version"], name=op.f("fk_promotions_version_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotions")),
    )
    op.create_table(
        "verdicts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("label", sa.String(length=8), nullable=False),
        sa.Column("fake_score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(length=255), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("n_bytes", sa.BigInteger(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("fetch_ms", sa.Float(), nullable=True),
        sa.Column("decode_ms", sa.Float(), nullable=True),
        sa.Column("infer_ms", sa.Float(), nullable=True),
        sa.Column("cached", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("label IN ('real', 'fake')", name=op.f("ck_verdicts_label_valid")),
        sa.CheckConstraint("fake_score >= 0 AND fake_score <= 1", name=op.f("ck_verdicts_fake_score_range")),
        sa.CheckConstraint("length(image_sha256) = 64", name=op.f("ck_verdicts_image_sha256_length")),
        sa.CheckConstraint("threshold >= 0 AND threshold <= 1", name=op.f("ck_verdicts_threshold_range")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["scan_jobs.id"], name=op.f("fk_verdicts_job_id_scan_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdicts")),
        sa.UniqueConstraint("job_id", name=op.f("uq_verdicts_job_id")),
    )
    op.create_index(
        "ix_verdicts_image_sha256_model_version", "verdicts", ["image_sha256", "model_version"], unique=False
    )
    op.create_index("ix_verdicts_label_created_at", "verdicts", ["label", "created_at"], unique=False)
    op.create_index(op.f("ix_verdicts_model_version"), "verdicts", ["model_version"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_verdicts_model_version"), table_name="verdicts")
    op.drop_index("ix_verdicts_label_created_at", table_name="verdicts")
    op.drop_index("ix_verdicts_image_sha256_model_version", table_name="verdicts")
    op.drop_table("verdicts")
    op.drop_table("promotions")
    op.drop_index(
        "ix_scan_jobs_unsent",
        table_name="scan_jobs",
        postgresql_where=sa.text("enqueued_at IS NULL AND state = 'queued'"),
        sqlite_where=sa.text("enqueued_at IS NULL AND state = 'queued'"),
    )
    op.drop_index("ix_scan_jobs_submission_id_state", table_name="scan_jobs")
    op.drop_index("ix_scan_jobs_state_lease_until", table_name="scan_jobs")
    op.drop_table("scan_jobs")
    op.drop_table("model_versions")
    op.drop_index("ix_training_runs_state_created_at", table_name="training_runs")
    op.drop_table("training_runs")
    op.drop_table("submissions")
