"""Perceptual hashes and hash banks: verdict_hashes, hash_banks, bank_entries, and the near-duplicate
columns of verdicts (near_duplicate_of, near_distance, matches).

Tenants: ``tenant_id`` columns default to the default tenant (dfscan/tenants.py) and carry no foreign key
here; the tenants migration may add one.

Revision ID: 0013
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT = "00000000-0000-0000-0000-000000000001"
_JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("near_duplicate_of", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("near_distance", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("matches", _JSON, nullable=True))
    op.create_table(
        "verdict_hashes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("t", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("pdq", sa.LargeBinary(), nullable=False),
        sa.Column("quality", sa.SmallInteger(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), server_default=sa.text(f"'{DEFAULT_TENANT}'"), nullable=False),
        sa.Column("model_version", sa.String(length=255), nullable=False),
        sa.Column("media", sa.String(length=8), server_default=sa.text("'image'"), nullable=False),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_verdict_hashes_seq_nonnegative")),
        sa.CheckConstraint("length(pdq) = 32", name=op.f("ck_verdict_hashes_pdq_length")),
        sa.CheckConstraint("quality >= 0 AND quality <= 100", name=op.f("ck_verdict_hashes_quality_range")),
        sa.CheckConstraint("media IN ('image', 'video')", name=op.f("ck_verdict_hashes_media_valid")),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["verdicts.job_id"],
            name=op.f("fk_verdict_hashes_job_id_verdicts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdict_hashes")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_verdict_hashes_job_id_seq")),
    )
    op.create_table(
        "hash_banks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Uuid(), server_default=sa.text(f"'{DEFAULT_TENANT}'"), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("shared", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("force_label", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "force_label IS NULL OR force_label IN ('fake', 'real')",
            name=op.f("ck_hash_banks_force_label_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hash_banks")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_hash_banks_tenant_id_name")),
    )
    op.create_table(
        "bank_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("bank_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("pdq", sa.LargeBinary(), nullable=False),
        sa.Column("quality", sa.SmallInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("length(pdq) = 32", name=op.f("ck_bank_entries_pdq_length")),
        sa.ForeignKeyConstraint(
            ["bank_id"], ["hash_banks.id"], name=op.f("fk_bank_entries_bank_id_hash_banks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_entries")),
    )
    op.create_index(op.f("ix_bank_entries_bank_id"), "bank_entries", ["bank_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_bank_entries_bank_id"), table_name="bank_entries")
    op.drop_table("bank_entries")
    op.drop_table("hash_banks")
    op.drop_table("verdict_hashes")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("matches")
        batch.drop_column("near_distance")
        batch.drop_column("near_duplicate_of")
