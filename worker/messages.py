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

from dfscan.exceptions import BadMessageError, BadOptionError, DfscanError
from dfscan.options import DEFAULT_OPTIONS, OPTION_NAMES, JobOptions, parse_options
from dfscan.urlguard import check_callback_url
from dfscan.webhooks import parse_events

MAX_SOURCES_PER_MESSAGE = 1000
MAX_JOBS_PER_MESSAGE = 64
MAX_SOURCE_LENGTH = 4096
_JOB_KEYS = {"job_id", "job_ids"}
_SOURCES_KEYS = {"sources", "client_ref", "priority", "callback_url", "callback_events", *OPTION_NAMES}


@dataclass(frozen=True)
class JobMessage:
    job_ids: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class SourcesMessage:
    sources: tuple[str, ...]
    client_ref: str | None
    priority: int
    callback_url: str | None = None
    callback_events: tuple[str, ...] | None = None
    options: JobOptions = DEFAULT_OPTIONS


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


def job_ids_of(kwargs: Mapping[str, Any]) -> list[uuid.UUID]:
    """The jobs a (possibly malformed) message names validly."""
    named = [kwargs["job_id"]] if "job_id" in kwargs else []
    if isinstance(kwargs.get("job_ids"), list):
        named += kwargs["job_ids"][:MAX_JOBS_PER_MESSAGE]
    return [job_id for job_id in map(_uuid, named) if job_id is not None]


def parse_scan_message(
    args: Sequence[Any], kwargs: Mapping[str, Any], *, callback_allowlist: tuple[str, ...] = ()
) -> JobMessage | SourcesMessage:
    """The message's jobs or sources, checked; BadMessageError (BAD_MESSAGE, or the callback URL's own
    code: CALLBACK_URL_TOO_LONG, UNSUPPORTED_SOURCE, BLOCKED_DESTINATION) when it does not fit.
    ``callback_allowlist`` is DFSCAN_WEBHOOK_ALLOWLIST."""
    if args and not kwargs and len(args) == 1 and isinstance(args[0], list):
        kwargs = {"sources": args[0]}  # celery-node style: task.applyAsync([["https://..."]])
    elif args:
        raise BadMessageError(f"unexpected positional arguments {list(args)[:3]!r}; send JSON kwargs")
    if "job_id" in kwargs or "job_ids" in kwargs:
        unknown = set(kwargs) - _JOB_KEYS
        if unknown:
            raise BadMessageError(f"unknown fields {sorted(unknown)} beside job_id(s)")
        if "job_id" in kwargs and "job_ids" in kwargs:
            raise BadMessageError("send job_id or job_ids, not both")
        named = [kwargs["job_id"]] if "job_id" in kwargs else kwargs["job_ids"]
        if not isinstance(named, list) or not 1 <= len(named) <= MAX_JOBS_PER_MESSAGE:
            raise BadMessageError(f"job_ids must be a list of 1 to {MAX_JOBS_PER_MESSAGE} UUIDs")
        ids = [_uuid(value) for value in named]
        bad = [value for value, job_id in zip(named, ids, strict=True) if job_id is None]
        if bad:
            raise BadMessageError(f"job id {bad[0]!r} is not a UUID")
        return JobMessage(tuple(dict.fromkeys(job_id for job_id in ids if job_id is not None)))
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
            _storable("source", source)
        client_ref = kwargs.get("client_ref")
        if client_ref is not None and not isinstance(client_ref, str):
            raise BadMessageError("client_ref must be a string")
        if client_ref is not None:
            _storable("client_ref", client_ref)
        priority = kwargs.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
            raise BadMessageError("priority must be an integer from 0 to 9")
        callback_url, events = _callback(kwargs, callback_allowlist)
        try:  # the per-job options (dfscan/options.py), checked as at every other intake
            options = parse_options(kwargs.get("explain"), kwargs.get("faces"))
        except BadOptionError as exc:
            raise BadMessageError(exc.message, code=exc.code) from None
        return SourcesMessage(tuple(sources), client_ref, priority, callback_url, events, options)
    raise BadMessageError(f"message has neither job_id nor sources (fields: {sorted(kwargs)[:10]})")


def _storable(field: str, text: str) -> None:
    """Refuse text that no database text column can hold: a lone surrogate (``"\\ud800"`` in the
    JSON; not encodable as UTF-8) or a NUL character (PostgreSQL text refuses it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadMessageError(
            f"{field} {ascii(text[:80])} is not valid Unicode text (a lone surrogate at {exc.start})"
        ) from None
    if "\x00" in text:
        raise BadMessageError(f"{field} {ascii(text[:80])} contains a NUL character")


def _callback(
    kwargs: Mapping[str, Any], allowlist: tuple[str, ...]
) -> tuple[str | None, tuple[str, ...] | None]:
    """``callback_url`` (checked by ``dfscan.urlguard.check_callback_url``, as ScanClient checks it;
    resolved and checked again at delivery) and ``callback_events`` (a list or comma-separated string
    of event names; default every event)."""
    url = kwargs.get("callback_url")
    events = kwargs.get("callback_events")
    if url is None:
        if events is not None:
            raise BadMessageError("callback_events needs a callback_url")
        return None, None
    try:
        check_callback_url(url, allowlist)
    except DfscanError as exc:  # the URL's own code, so a client can tell a blocked address from a typo
        raise BadMessageError(exc.message, code=exc.code) from None
    assert isinstance(url, str)
    _storable("callback_url", url)
    if isinstance(events, list) and all(isinstance(e, str) for e in events):
        events = ",".join(events)
    if events is not None and not isinstance(events, str):
        raise BadMessageError("callback_events must be a list of event names")
    try:
        return url, parse_events(events)
    except ValueError as exc:
        raise BadMessageError(str(exc)) from None
