"""Who holds uploaded bytes: one ``uploads`` row per (tenant, sha256), until its ``expires_at``.

The HTTP API writes the row in the transaction that writes the upload's jobs; the console serves a
verdict's media only to a tenant whose row still holds it; the sweeper deletes expired rows (not those a
queued or running job of the tenant still needs), and then deletes bytes that no row holds. Functions take
a Session and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Exists, and_, case, delete, exists, func, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.jobs import ACTIVE
from db.models import ScanJob, Upload, utcnow
from dfscan.uploads import UPLOAD_SCHEME

# Digests per IN list when asking which stored bytes some row still holds.
_CHUNK = 1000


def hold(
    session: Session,
    tenant_id: uuid.UUID,
    sha256: str,
    *,
    size: int,
    media_kind: str,
    expires_at: datetime | None,
) -> None:
    """Record that ``tenant_id`` uploaded these bytes; uploading them again pushes ``expires_at`` out
    (never in: a later upload with a shorter retention does not cut the tenant's hold)."""
    values = {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "sha256": sha256,
        "size": size,
        "media_kind": media_kind,
        "expires_at": expires_at,
    }
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"uploads need PostgreSQL or SQLite, not {dialect}")
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(Upload).values(**values)
    new = insert.excluded.expires_at
    later = (
        func.greatest(Upload.expires_at, new) if dialect == "postgresql" else func.max(Upload.expires_at, new)
    )
    # NULL is "for ever" (retention off): it wins; otherwise the later of the two.
    expires = case((or_(Upload.expires_at.is_(None), new.is_(None)), None), else_=later)
    session.execute(
        insert.on_conflict_do_update(index_elements=["tenant_id", "sha256"], set_={"expires_at": expires})
    )


def held_by(
    session: Session, tenant_id: uuid.UUID, digests: Sequence[str | None], *, now: datetime | None = None
) -> set[str]:
    """Of ``digests``, those the tenant's own rows hold and that have not expired: the bytes this tenant
    may see. Another tenant's upload of the same bytes never counts."""
    now = now or utcnow()
    wanted = sorted({digest for digest in digests if digest})
    held: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        query = select(Upload.sha256).where(
            Upload.tenant_id == tenant_id,
            Upload.sha256.in_(wanted[start : start + _CHUNK]),
            or_(Upload.expires_at.is_(None), Upload.expires_at > now),
        )
        held.update(session.scalars(query))
    return held


def _needed_by_a_job() -> Exists:
    """An active job of the row's tenant still reads these bytes."""
    return exists().where(
        ScanJob.tenant_id == Upload.tenant_id,
        ScanJob.state.in_(ACTIVE),
        ScanJob.source == literal(UPLOAD_SCHEME) + Upload.sha256,
    )


def expire(session: Session, *, now: datetime | None = None, limit: int = 5000) -> int:
    """Delete up to ``limit`` expired rows, except those a queued or running job of their tenant still
    needs; returns how many were deleted."""
    now = now or utcnow()
    doomed = (
        select(Upload.id)
        .where(and_(Upload.expires_at.is_not(None), Upload.expires_at <= now), ~_needed_by_a_job())
        .limit(limit)
    )
    ids = list(session.scalars(doomed))
    if ids:
        session.execute(
            delete(Upload).where(Upload.id.in_(ids)), execution_options={"synchronize_session": False}
        )
    return len(ids)


def held_digests(session: Session, digests: Sequence[str]) -> set[str]:
    """Of ``digests``, those some tenant's row still holds (expired or not: the sweep deletes a row
    before its bytes, and a row kept for a job keeps its bytes)."""
    held: set[str] = set()
    for start in range(0, len(digests), _CHUNK):
        chunk = list(digests[start : start + _CHUNK])
        held.update(session.scalars(select(Upload.sha256).where(Upload.sha256.in_(chunk)).distinct()))
    return held
