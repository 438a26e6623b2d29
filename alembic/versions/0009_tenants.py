"""Tenants and API keys: every submission and job belongs to one tenant.

- ``tenants``: a name, and the tenant's webhook signing secret with the previous one kept valid until
  ``previous_webhook_secret_until`` (rotation with a grace period; both signatures are sent meanwhile).
  A NULL secret means the deployment-wide DFSCAN_WEBHOOK_SECRET signs that tenant's events.
- ``api_keys``: a tenant's keys for the HTTP API. Only the SHA-256 of a key is stored (``key_hash``); the
  key itself is shown once when it is made. ``prefix`` is a short public part for lists and logs.
- ``submissions.tenant_id`` and ``scan_jobs.tenant_id``: NOT NULL, defaulting to the ``default`` tenant
  (inserted here with the fixed id of ``dfscan.tenants.DEFAULT_TENANT_ID``), so rows written by
  ScanClient, `dfscan submit`, foreign messages and the previous release during a rolling update all
  belong to it. ``scan_jobs.api_key_id``: the key that submitted the job over HTTP (NULL otherwise), for
  the per-key quota on jobs outstanding.
- An idempotency key is unique within its tenant (two tenants may pick the same key).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# dfscan.tenants.DEFAULT_TENANT_ID, written out: a migration must not change when the code does.
DEFAULT_TENANT_ID = "00000000-0000-0000-0000-000000000001"
DEFAULT_TENANT_NAME = "default"


def _default_literal() -> sa.TextClause:
    """The default tenant id as a server default: a uuid on Postgres, 32 hex digits on SQLite (how
    SQLAlchemy's Uuid type stores it there)."""
    if op.get_bind().dialect.name == "postgresql":
        return sa.text(f"'{DEFAULT_TENANT_ID}'")
    return sa.text(f"'{DEFAULT_TENANT_ID.replace('-', '')}'")


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("webhook_secret", sa.String(length=128), nullable=True),
        sa.Column("previous_webhook_secret", sa.String(length=128), nullable=True),
        sa.Column("previous_webhook_secret_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
        sa.CheckConstraint("length(name) >= 1", name=op.f("ck_tenants_name_not_empty")),
        sa.CheckConstraint(
            "(previous_webhook_secret IS NULL) = (previous_webhook_secret_until IS NULL)",
            name=op.f("ck_tenants_previous_secret_has_deadline"),
        ),
    )
    op.bulk_insert(tenants, [{"id": uuid.UUID(DEFAULT_TENANT_ID), "name": DEFAULT_TENANT_NAME}])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_api_keys_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.CheckConstraint("length(key_hash) = 64", name=op.f("ck_api_keys_key_hash_length")),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"], unique=False)
    default = _default_literal()
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("tenant_id", sa.Uuid(), nullable=False, server_default=default))
        batch.create_foreign_key(op.f("fk_submissions_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"])
        batch.drop_constraint(op.f("uq_submissions_idempotency_key"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_submissions_tenant_id_idempotency_key"), ["tenant_id", "idempotency_key"]
        )
    with op.batch_alter_table("scan_jobs") as batch:
        batch.add_column(sa.Column("tenant_id", sa.Uuid(), nullable=False, server_default=default))
        batch.create_foreign_key(op.f("fk_scan_jobs_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"])
        batch.add_column(sa.Column("api_key_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_scan_jobs_api_key_id_api_keys"), "api_keys", ["api_key_id"], ["id"], ondelete="SET NULL"
        )
    # The per-key quota counts a key's queued and running jobs: partial, so it stays as small as the backlog.
    op.create_index(
        "ix_scan_jobs_api_key_id_active",
        "scan_jobs",
        ["api_key_id"],
        unique=False,
        postgresql_where=sa.text("state IN ('queued', 'running')"),
        sqlite_where=sa.text("state IN ('queued', 'running')"),
    )
    # GET /v1/results pages one tenant's jobs newest first.
    op.create_index("ix_scan_jobs_tenant_id_created_at", "scan_jobs", ["tenant_id", "created_at"], unique=False)
    op.create_index("ix_submissions_tenant_id", "submissions", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_submissions_tenant_id", table_name="submissions")
    op.drop_index("ix_scan_jobs_tenant_id_created_at", table_name="scan_jobs")
    op.drop_index("ix_scan_jobs_api_key_id_active", table_name="scan_jobs")
    with op.batch_alter_table("scan_jobs") as batch:
        batch.drop_constraint(op.f("fk_scan_jobs_api_key_id_api_keys"), type_="foreignkey")
        batch.drop_column("api_key_id")
        batch.drop_constraint(op.f("fk_scan_jobs_tenant_id_tenants"), type_="foreignkey")
        batch.drop_column("tenant_id")
    # Idempotency keys were unique per tenant and become unique overall: other tenants' submissions lose
    # theirs (two tenants may have used the same key).
    op.execute(sa.text(f"UPDATE submissions SET idempotency_key = NULL WHERE tenant_id <> {_default_literal().text}"))
    with op.batch_alter_table("submissions") as batch:
        batch.drop_constraint(op.f("uq_submissions_tenant_id_idempotency_key"), type_="unique")
        batch.create_unique_constraint(op.f("uq_submissions_idempotency_key"), ["idempotency_key"])
        batch.drop_constraint(op.f("fk_submissions_tenant_id_tenants"), type_="foreignkey")
        batch.drop_column("tenant_id")
    op.drop_index("ix_api_keys_tenant_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
