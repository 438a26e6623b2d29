"""Uploads: each upload of the HTTP API belongs to one tenant. The bytes are stored once by content
(``DFSCAN_UPLOAD_STORE``, by sha256); a row says which tenant uploaded them and until when they are its.

Two tenants uploading the same bytes have a row each: retention ends each tenant's hold on its own row's
``expires_at``, and the bytes are deleted only when no row holds them (``db.uploads``)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import MEDIA, Base, one_of


class Upload(Base):
    """One tenant's hold on uploaded bytes: one row per (tenant, sha256); uploading the same bytes again
    pushes ``expires_at`` out."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    media_kind: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # NULL: held for as long as retention is off (DFSCAN_UPLOAD_RETENTION_HOURS=0).
    expires_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("tenant_id", "sha256"),
        CheckConstraint(one_of("media_kind", MEDIA), name="media_kind_valid"),
        CheckConstraint("length(sha256) = 64", name="sha256_length"),
        CheckConstraint("size >= 0", name="size_not_negative"),
        Index("ix_uploads_sha256", "sha256"),
        Index("ix_uploads_expires_at", "expires_at"),
    )
