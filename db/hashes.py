"""Perceptual hashes and hash banks: the queries (docs/near-duplicates.md).

``verdict_hashes`` holds every verdict's PDQ hashes (one for an image, one per sampled frame for a clip),
with the tenant and model version copied in, so a worker's near-duplicate index (worker/near.py) is kept in
step by reading rows past the highest id it has. ``hash_banks`` and ``bank_entries`` are the lists a tenant
imports or builds from its jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import func, insert, or_, select
from sqlalchemy.orm import Session

from db.models import BankEntry, HashBank, VerdictHash, VerdictRow
from db.verdicts import stored_of
from dfscan.exceptions import BadArgumentError, UnknownIdError
from dfscan.tenants import DEFAULT_TENANT_ID
from dfscan.verdicts import Stored


class HashRow(NamedTuple):
    """One stored verdict hash, as the index reads it."""

    id: int
    job_id: uuid.UUID
    seq: int
    t: float
    pdq: bytes
    quality: int
    tenant_id: uuid.UUID
    model_version: str
    media: str


class EntryRow(NamedTuple):
    """One bank entry, as the index reads it."""

    id: int
    bank_id: int
    external_id: str | None
    pdq: bytes
    quality: int | None


def verdict_hashes_after(session: Session, after: int, limit: int = 100_000) -> list[HashRow]:
    """Verdict hashes with an id above ``after``, in id order (at most ``limit``)."""
    query = (
        select(
            VerdictHash.id,
            VerdictHash.job_id,
            VerdictHash.seq,
            VerdictHash.t,
            VerdictHash.pdq,
            VerdictHash.quality,
            VerdictHash.tenant_id,
            VerdictHash.model_version,
            VerdictHash.media,
        )
        .where(VerdictHash.id > after)
        .order_by(VerdictHash.id)
        .limit(limit)
    )
    return [HashRow(*row) for row in session.execute(query)]


def bank_entries_after(session: Session, after: int, limit: int = 100_000) -> list[EntryRow]:
    """Bank entries with an id above ``after``, in id order (at most ``limit``)."""
    query = (
        select(BankEntry.id, BankEntry.bank_id, BankEntry.external_id, BankEntry.pdq, BankEntry.quality)
        .where(BankEntry.id > after)
        .order_by(BankEntry.id)
        .limit(limit)
    )
    return [EntryRow(*row) for row in session.execute(query)]


def all_banks(session: Session) -> list[HashBank]:
    """Every bank of every tenant (few rows: read on each index refresh, so enabling takes effect at once)."""
    return list(session.scalars(select(HashBank).order_by(HashBank.id)))


def stored_by_job(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Stored]:
    """What these jobs' verdicts said (:func:`db.verdicts.stored_of`), per job."""
    if not job_ids:
        return {}
    rows = list(
        session.execute(select(VerdictRow).where(VerdictRow.job_id.in_(sorted(set(job_ids))))).scalars()
    )
    return stored_of(session, rows)


# --- banks --------------------------------------------------------------------------------------


def create_bank(
    session: Session,
    name: str,
    *,
    tenant_id: uuid.UUID = DEFAULT_TENANT_ID,
    shared: bool = False,
    force_label: str | None = None,
) -> HashBank:
    """A new bank of the tenant (BAD_ARGUMENT when the name is taken)."""
    if not name or len(name) > 128:
        raise BadArgumentError("a bank name has 1 to 128 characters")
    if force_label not in (None, "fake", "real"):
        raise BadArgumentError(f"--force-label is fake or real, got {force_label!r}")
    if find_bank(session, name, tenant_id=tenant_id, own=True) is not None:
        raise BadArgumentError(f"the bank {name!r} exists")
    bank = HashBank(tenant_id=tenant_id, name=name, shared=shared, force_label=force_label)
    session.add(bank)
    session.flush()
    return bank


def find_bank(
    session: Session, name: str, *, tenant_id: uuid.UUID = DEFAULT_TENANT_ID, own: bool = False
) -> HashBank | None:
    """The tenant's bank of that name, else (unless ``own``) a shared bank of that name."""
    bank = session.scalars(
        select(HashBank).where(HashBank.tenant_id == tenant_id, HashBank.name == name)
    ).first()
    if bank is None and not own:
        bank = session.scalars(
            select(HashBank).where(HashBank.shared.is_(True), HashBank.name == name).order_by(HashBank.id)
        ).first()
    return bank


def get_bank(session: Session, name: str, *, tenant_id: uuid.UUID = DEFAULT_TENANT_ID) -> HashBank:
    """:func:`find_bank`, UNKNOWN_ID when there is none."""
    bank = find_bank(session, name, tenant_id=tenant_id)
    if bank is None:
        raise UnknownIdError(f"no bank {name!r}")
    return bank


def add_entries(
    session: Session, bank: HashBank, entries: Iterable[tuple[bytes, str | None, int | None]]
) -> int:
    """Add (pdq, id in the bank, quality) entries to ``bank``; returns how many."""
    rows = [
        {"bank_id": bank.id, "pdq": pdq, "external_id": external_id, "quality": quality}
        for pdq, external_id, quality in entries
    ]
    if rows:
        session.execute(insert(BankEntry), rows)
    return len(rows)


def bank_entries(session: Session, bank: HashBank) -> list[EntryRow]:
    """Every entry of ``bank``, in the order added."""
    query = (
        select(BankEntry.id, BankEntry.bank_id, BankEntry.external_id, BankEntry.pdq, BankEntry.quality)
        .where(BankEntry.bank_id == bank.id)
        .order_by(BankEntry.id)
    )
    return [EntryRow(*row) for row in session.execute(query)]


def list_banks(session: Session, tenant_id: uuid.UUID = DEFAULT_TENANT_ID) -> list[dict[str, Any]]:
    """The tenant's banks and the shared ones, with their entry counts."""
    counts = select(BankEntry.bank_id, func.count().label("n")).group_by(BankEntry.bank_id).subquery("counts")
    query = (
        select(HashBank, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.bank_id == HashBank.id)
        .where(or_(HashBank.tenant_id == tenant_id, HashBank.shared.is_(True)))
        .order_by(HashBank.name)
    )
    return [
        {
            "name": bank.name,
            "entries": int(n),
            "shared": bank.shared,
            "enabled": bank.enabled,
            "force_label": bank.force_label,
            "own": bank.tenant_id == tenant_id,
        }
        for bank, n in session.execute(query)
    ]


def job_hashes_for_bank(
    session: Session, job_id: uuid.UUID, tenant_id: uuid.UUID = DEFAULT_TENANT_ID
) -> list[tuple[bytes, int]]:
    """A job's verdict hashes (pdq, quality) to add to a bank; UNKNOWN_ID when it has none (or another
    tenant owns it)."""
    query = (
        select(VerdictHash.pdq, VerdictHash.quality)
        .where(VerdictHash.job_id == job_id, VerdictHash.tenant_id == tenant_id)
        .order_by(VerdictHash.seq)
    )
    found = [(bytes(pdq), int(quality)) for pdq, quality in session.execute(query)]
    if not found:
        raise UnknownIdError(f"no hashed verdict for job {job_id}")
    return found
