"""Tenants and their API keys: create, list, revoke, authenticate, rotate the webhook secret.

A key is ``dfs_<prefix>_<secret>``: ``prefix`` (8 hex digits) is public and shown in lists, ``secret`` is
256 random bits. Only ``sha256(key)`` is stored. Why a plain digest and not a password hash (bcrypt,
argon2): a password hash slows the guessing of low-entropy secrets; a 256-bit random key cannot be guessed
however fast the hash, and a digest lets every request find its key with one index lookup and no extra CPU.

Functions take a Session and never commit (the caller owns the transaction), as in ``db/jobs.py``.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import ApiKey, Tenant, utcnow
from dfscan.exceptions import BadArgumentError, UnknownIdError

KEY_PREFIX = "dfs_"
# What a key may do: submit scans, read submissions/jobs/results, review verdicts (the review console).
SCOPES = ("submit", "read", "review")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def hash_key(raw_key: str) -> str:
    """The stored form of a key: its SHA-256, hex."""
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()


def new_webhook_secret() -> str:
    """A fresh webhook signing secret (256 random bits, URL-safe text)."""
    return "whsec_" + secrets.token_urlsafe(32)


def parse_scopes(value: str | Collection[str]) -> tuple[str, ...]:
    """``"submit,read"`` (or a collection) as scopes in canonical order; BAD_ARGUMENT for an unknown one."""
    items = value.split(",") if isinstance(value, str) else list(value)
    wanted = {item.strip() for item in items if item.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown or not wanted:
        raise BadArgumentError(
            f"scopes must be a comma-separated subset of {', '.join(SCOPES)}; got {','.join(items)!r}"
        )
    return tuple(scope for scope in SCOPES if scope in wanted)


def check_name(name: str) -> str:
    """A tenant name: 1-64 characters of a-z, 0-9, '-', '_', '.'. BAD_ARGUMENT otherwise."""
    if not 1 <= len(name) <= 64 or not set(name) <= _NAME_CHARS:
        raise BadArgumentError(
            f"tenant name {name!r}: use 1-64 characters of lower-case letters, digits, '-', '_' and '.'"
        )
    return name


def create_tenant(session: Session, name: str) -> Tenant:
    """A new tenant with its own webhook signing secret; BAD_ARGUMENT if the name is taken or malformed."""
    tenant = Tenant(id=uuid.uuid4(), name=check_name(name), webhook_secret=new_webhook_secret())
    try:
        with session.begin_nested():
            session.add(tenant)
            session.flush()
    except IntegrityError:
        raise BadArgumentError(f"a tenant named {name!r} exists already") from None
    return tenant


def tenant_by_name(session: Session, name: str) -> Tenant:
    """The tenant called ``name``; UNKNOWN_ID if none."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()
    if tenant is None:
        raise UnknownIdError(f"no tenant named {name!r} (`dfscan tenants list` shows them)")
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))


@dataclass(frozen=True)
class NewKey:
    """A key just made: ``raw`` is shown once and never stored."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    prefix: str
    scopes: tuple[str, ...]
    raw: str


def create_key(session: Session, tenant_id: uuid.UUID, scopes: Sequence[str]) -> NewKey:
    """A new key for the tenant with ``scopes`` (see :func:`parse_scopes`)."""
    scopes = parse_scopes(scopes)
    prefix = secrets.token_hex(4)
    raw = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=uuid.uuid4(), tenant_id=tenant_id, prefix=prefix, key_hash=hash_key(raw), scopes=",".join(scopes)
    )
    session.add(key)
    session.flush()
    return NewKey(key.id, tenant_id, prefix, scopes, raw)


@dataclass(frozen=True)
class KeyInfo:
    """What `dfscan keys list` shows of a key (never the key)."""

    id: uuid.UUID
    tenant: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


def list_keys(session: Session, tenant_id: uuid.UUID | None = None) -> list[KeyInfo]:
    query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    rows = session.execute(query.order_by(Tenant.name, ApiKey.created_at))
    return [
        KeyInfo(key.id, name, key.prefix, tuple(key.scopes.split(",")), key.created_at, key.revoked_at)
        for key, name in rows
    ]


def revoke_key(session: Session, key_id: uuid.UUID) -> bool:
    """Revoke the key (from the next request on). True if this call revoked it, False if it already was;
    UNKNOWN_ID for a key that does not exist."""
    revoked = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(ApiKey.id),
        execution_options={"synchronize_session": False},
    ).first()
    if revoked is not None:
        return True
    if session.get(ApiKey, key_id) is None:
        raise UnknownIdError(f"no API key {key_id} (`dfscan keys list` shows them)")
    return False


@dataclass(frozen=True)
class KeyOwner:
    """What a valid key authorises: its tenant and scopes."""

    key_id: uuid.UUID
    tenant_id: uuid.UUID
    scopes: frozenset[str]


def find_key(session: Session, raw_key: str) -> KeyOwner | None:
    """The live (not revoked) key ``raw_key``, or None. Only the digest reaches the database."""
    if not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 128:
        return None
    row = session.execute(
        select(ApiKey.id, ApiKey.tenant_id, ApiKey.scopes).where(
            ApiKey.key_hash == hash_key(raw_key), ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    return KeyOwner(row.id, row.tenant_id, frozenset(row.scopes.split(",")))


def rotate_webhook_secret(session: Session, name: str, *, grace: timedelta) -> Tenant:
    """Give the tenant a new webhook secret; the current one stays valid for ``grace`` (events are
    signed with both meanwhile). A tenant that used DFSCAN_WEBHOOK_SECRET gets its own secret."""
    tenant = tenant_by_name(session, name)
    if tenant.webhook_secret is not None and grace > timedelta(0):
        tenant.previous_webhook_secret = tenant.webhook_secret
        tenant.previous_webhook_secret_until = utcnow() + grace
    else:
        tenant.previous_webhook_secret = None
        tenant.previous_webhook_secret_until = None
    tenant.webhook_secret = new_webhook_secret()
    session.flush()
    return tenant


def webhook_secrets(tenant: Tenant, *, now: datetime | None = None) -> list[str]:
    """The secrets the tenant's events are signed with now: its current one, then the previous one while
    its grace period lasts. Empty when the tenant has none (DFSCAN_WEBHOOK_SECRET applies)."""
    now = now or utcnow()
    out = [tenant.webhook_secret] if tenant.webhook_secret else []
    until = tenant.previous_webhook_secret_until
    if tenant.previous_webhook_secret and until is not None and until > now:
        out.append(tenant.previous_webhook_secret)
    return out
