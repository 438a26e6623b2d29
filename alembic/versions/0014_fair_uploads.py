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
    op.create_index(
        "ix_scan_jobs_tenant_id_active",
        "scan_jobs",
        ["tenant_id"],
        postgresql_where=_ACTIVE,
        sqlite_where=_ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_scan_jobs_tenant_id_active", table_name="scan_jobs")
