"""Parse ``dfscan.scan`` task arguments (the message contract in dfscan/queueing.py).

Messages come from dfscan's producer and from foreign Celery clients, so nothing is trusted: a
message that does not fit becomes BadMessageError, and its job (when it names one) fails with
``BAD_MESSAGE`` instead of looping through retries.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dfscan.exceptions import BadMessageError

MAX_SOURCES_PER_MESSAGE = 1000
MAX_SOURCE_LENGTH = 4096
_JOB_KEYS = {"job_id"}
_SOURCES_KEYS = {"sources", "client_ref", "priority"}


@dataclass(frozen=True)
class JobMessage:
    job_id: uuid.UUID


@dataclass(frozen=True)
class SourcesMessage:
    sources: tuple[str, ...]
    client_ref: str | None
    priority: int


def job_id_of(kwargs: Mapping[str, Any]) -> uuid.UUID | None:
    """The job a (possibly malformed) message names, if it names one validly."""
    try:
        return uuid.UUID(str(kwargs["job_id"]))
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def parse_scan_message(args: Sequence[Any], kwargs: Mapping[str, Any]) -> JobMessage | SourcesMessage:
    if args and not kwargs and len(args) == 1 and isinstance(args[0], list):
        kwargs = {"sources": args[0]}  # celery-node style: task.applyAsync([["https://..."]])
    elif args:
        raise BadMessageError(f"unexpected positional arguments {list(args)[:3]!r}; send JSON kwargs")
    if "job_id" in kwargs:
        unknown = set(kwargs) - _JOB_KEYS
        if unknown:
            raise BadMessageError(f"unknown fields {sorted(unknown)} beside job_id")
        job_id = job_id_of(kwargs)
        if job_id is None:
            raise BadMessageError(f"job_id {kwargs['job_id']!r} is not a UUID")
        return JobMessage(job_id)
    if "sources" in kwargs:
        unknown = set(kwargs) - _SOURCES_KEYS
        if unknown:
            raise BadMessageError(f"unknown fields {sorted(unknown)} beside sources")
        sources = kwargs["sources"]
        if isinstance(sources, str):
            sources = [sources]
        if not isinstance(sources, list) or not sources:
            raise BadMessageError("sources must be a non-empty list of URL or path strings")
        if len(sources) > MAX_SOURCES_PER_MESSAGE:
            raise BadMessageError(f"{len(sources)} sources in one message; at most {MAX_SOURCES_PER_MESSAGE}")
        for source in sources:
            if not isinstance(source, str) or not source.strip() or len(source) > MAX_SOURCE_LENGTH:
                raise BadMessageError(f"source {str(source)[:80]!r} is not a non-empty string of sane length")
        client_ref = kwargs.get("client_ref")
        if client_ref is not None and not isinstance(client_ref, str):
            raise BadMessageError("client_ref must be a string")
        priority = kwargs.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
            raise BadMessageError("priority must be an integer from 0 to 9")
        return SourcesMessage(tuple(sources), client_ref, priority)
    raise BadMessageError(f"message has neither job_id nor sources (fields: {sorted(kwargs)[:10]})")
