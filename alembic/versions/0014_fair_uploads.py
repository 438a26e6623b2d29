"""Fair share and owned uploads: the partial index of a tenant's outstanding jobs (its fair-share step,
dfscan.queueing.fair_level), and the uploads table (each upload belongs to one tenant; retention deletes
rows, and a blob only when no row holds it).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = sa.text("state IN ('queued', 'running')")


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("media_kind", sa.String(length=8), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_uploads_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
        sa.UniqueConstraint("tenant_id", "sha256", name=op.f("uq_uploads_tenant_id_sha256")),
        sa.CheckConstraint("media_kind IN ('image', 'video')", name=op.f("ck_uploads_media_kind_valid")),
        sa.CheckConstraint("length(sha256) = 64", name=op.f("ck_uploads_sha256_length")),
        sa.CheckConstraint("size >= 0", name=op.f("ck_uploads_size_not_negative")),
    )
    op.create_index("ix_uploads_sha256", "uploads", ["sha256"], unique=False)
    op.create_index("ix_uploads_expires_at", "uploads", ["expires_at"], unique=False)
    op.create_index(
        "ix_scan_jobs_tenant_id_active",
        "scan_jobs",
        ["tenant_id"],
        postgresql_where=_ACTIVE,
        sqlite_where=_ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_scan_jobs_tenant_id_active", table_name="scan_jobs")
    op.drop_index("ix_uploads_expires_at", table_name="uploads")
    op.drop_index("ix_uploads_sha256", table_name="uploads")
    op.drop_table("uploads")
