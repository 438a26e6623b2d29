"""Hash banks: lists of known media hashes a tenant (or everyone, when shared) matches against."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    LargeBinary,
    SmallInteger,
    String,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import Base, BigIntId
from dfscan.tenants import DEFAULT_TENANT_ID


class HashBank(Base):
    """A named list of hashes to match every source against (known fakes, a partner's list). It belongs to
    a tenant; ``shared`` banks are matched for every tenant. ``force_label`` (fake or real), when set,
    is the label of every source that matches it."""

    __tablename__ = "hash_banks"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, default=DEFAULT_TENANT_ID, server_default=text(f"'{DEFAULT_TENANT_ID}'")
    )
    name: Mapped[str] = mapped_column(String(128))
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    force_label: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        CheckConstraint("force_label IS NULL OR force_label IN ('fake', 'real')", name="force_label_valid"),
    )


class BankEntry(Base):
    """One hash of a bank: PDQ (32 bytes), its id in the bank (imported, or the job it came from), quality."""

    __tablename__ = "bank_entries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("hash_banks.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str | None] = mapped_column(String(255))
    pdq: Mapped[bytes] = mapped_column(LargeBinary)
    quality: Mapped[int | None] = mapped_column(SmallInteger)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint("length(pdq) = 32", name="pdq_length"),)
