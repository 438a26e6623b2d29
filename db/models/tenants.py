"""Tenants and their API keys; every row below belongs to exactly one tenant."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    String,
    Uuid,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import Base
from dfscan.tenants import DEFAULT_TENANT_ID


class Tenant(Base):
    """A client of the HTTP API: its keys, submissions and jobs, and the secret its webhooks are signed with.

    ``webhook_secret`` NULL: DFSCAN_WEBHOOK_SECRET signs its events (the ``default`` tenant's case). After a
    rotation the previous secret stays valid until ``previous_webhook_secret_until``: events carry a
    signature with each secret until then.
    """

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(128))
    previous_webhook_secret_until: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("length(name) >= 1", name="name_not_empty"),
        CheckConstraint(
            "(previous_webhook_secret IS NULL) = (previous_webhook_secret_until IS NULL)",
            name="previous_secret_has_deadline",
        ),
    )


class ApiKey(Base):
    """A key of the HTTP API. Only ``key_hash`` (SHA-256 of the key) is stored: a key has 256 random bits,
    so a slow password hash would add no protection, and a plain digest lets each request find its key
    by an index lookup. ``prefix`` is the key's public start, shown by `dfscan keys list`; ``scopes`` a
    comma-separated subset of ``dfscan.api.auth.SCOPES``."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (CheckConstraint("length(key_hash) = 64", name="key_hash_length"),)


# Rows written without a tenant (ScanClient, `dfscan submit`, foreign messages) belong to the default
# tenant: a Python default for ORM and Core inserts; the migration sets the same as the server default
# (a uuid on Postgres, 32 hex digits on SQLite), for writers of the previous release.
def tenant_column() -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("tenants.id"), default=DEFAULT_TENANT_ID)
