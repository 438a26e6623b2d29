"""Shared pieces of the schema: the declarative base, the UTC timestamp type, the states and labels the CHECK constraints allow."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Integer,
    MetaData,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase

JOB_STATES = ("queued", "running", "done", "failed")
FINAL_JOB_STATES = ("done", "failed")
RUN_STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_RUN_STATES = ("done", "failed", "cancelled")
LABELS = ("real", "fake", "not_applicable")  # not_applicable: DFSCAN_FACES=require and no face
JUDGED_ON = ("faces", "image")
MEDIA = ("image", "video")
PROMOTION_REASONS = ("promote", "rollback", "default")
WEBHOOK_EVENTS = ("job.completed", "submission.completed", "job.reviewed")
DELIVERY_STATES = ("pending", "delivered", "failed")

# Constraint names are stable and predictable, so migrations can name what they drop or alter
# (SQLite batch mode needs named constraints to recreate tables).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (what every timestamp column stores)."""
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` on Postgres; on SQLite a UTC string. Always aware on the way out.

    Naive datetimes are refused on the way in: they are ambiguous, and a silent local-time bug in a
    lease deadline would requeue or fail jobs at the wrong moment.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime (UTC)")
        value = value.astimezone(timezone.utc)
        # SQLite stores text; drop the offset so every stored value compares as plain UTC text,
        # the same shape as CURRENT_TIMESTAMP (the server default).
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


JsonType = JSON().with_variant(JSONB(), "postgresql")
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JsonType}


def one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"
