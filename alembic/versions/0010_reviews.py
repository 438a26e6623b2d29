"""Reviews: people's decisions on verdicts (the review console and ``POST /v1/jobs/{id}/review``).

- ``reviews``: one row per decision (fake / real / not_applicable / escalate, an optional note), the job, its
  tenant and the API key of the reviewer. History is kept; the latest row of a job counts.
- ``ix_scan_jobs_review_queue``: a tenant's done jobs by ``(created_at, id)``, the console queue's keyset.
- ``webhook_deliveries.event`` may be ``job.reviewed``. Downgrading deletes those deliveries first.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False),
        sa.CheckConstraint(
            "decision IN ('fake', 'real', 'not_applicable', 'escalate')", name=op.f("ck_reviews_decision_valid")
        ),
        sa.CheckConstraint("note IS NULL OR length(note) <= 2000", name=op.f("ck_reviews_note_length")),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_reviews_api_key_id_api_keys"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["scan_jobs.id"], name=op.f("fk_reviews_job_id_scan_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_reviews_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index("ix_reviews_job_id_id", "reviews", ["job_id", "id"], unique=False)
    op.create_index("ix_reviews_tenant_id_created_at", "reviews", ["tenant_id", "created_at"], unique=False)
    op.create_index(
        "ix_scan_jobs_review_queue",
        "scan_jobs",
        ["tenant_id", "created_at", "id"],
        unique=False,
        postgresql_where=sa.text("state = 'done'"),
        sqlite_where=sa.text("state = 'done'"),
    )
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_constraint(op.f("ck_webhook_deliveries_event_valid"), type_="check")
        batch.create_check_constraint(
            op.f("ck_webhook_deliveries_event_valid"),
            "event IN ('job.completed', 'submission.completed', 'job.reviewed')",
        )


def downgrade() -> None:
    op.execute("DELETE FROM webhook_deliveries WHERE event = 'job.reviewed'")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_constraint(op.f("ck_webhook_deliveries_event_valid"), type_="check")
        batch.create_check_constraint(
            op.f("ck_webhook_deliveries_event_valid"), "event IN ('job.completed', 'submission.completed')"
        )
    op.drop_index("ix_scan_jobs_review_queue", table_name="scan_jobs")
    op.drop_index("ix_reviews_tenant_id_created_at", table_name="reviews")
    op.drop_index("ix_reviews_job_id_id", table_name="reviews")
    op.drop_table("reviews")
