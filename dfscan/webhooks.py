"""Webhook events and their signatures: what a receiver needs to verify a dfscan POST.

Standard library only, so a backend can ``from dfscan.webhooks import verify`` without the worker.

Every POST carries::

    X-Dfscan-Event-Id: <uuid>                 the same on every redelivery of one event
    X-Dfscan-Event: job.completed | submission.completed
    X-Dfscan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

Stripe's scheme: the timestamp is signed with the body, so a captured request cannot be replayed
later than the receiver's tolerance; ``v1`` names the scheme so it can change without breaking
receivers. Compare with a constant-time function.
"""

from __future__ import annotations

import hashlib
import hmac
import time

JOB_COMPLETED = "job.completed"
SUBMISSION_COMPLETED = "submission.completed"
EVENTS = (JOB_COMPLETED, SUBMISSION_COMPLETED)

SIGNATURE_HEADER = "X-Dfscan-Signature"
EVENT_ID_HEADER = "X-Dfscan-Event-Id"
EVENT_HEADER = "X-Dfscan-Event"

# How old a signature a receiver accepts by default (Stripe's default is 5 minutes).
DEFAULT_TOLERANCE = 300.0


def parse_events(value: str | None) -> tuple[str, ...]:
    """``"job.completed,submission.completed"`` -> the event names, checked; None or "" -> both."""
    if not value:
        return EVENTS
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [name for name in names if name not in EVENTS]
    if unknown or not names:
        raise ValueError(f"unknown webhook events {unknown}: choose from {', '.join(EVENTS)}")
    return names


def check_callback_url(url: str, allowlist: tuple[str, ...] = ()) -> None:
    """Refuse a callback URL before it is stored: ``dfscan.urlguard.check_callback_url``, the one
    check every intake runs (length, scheme, control characters, host syntax, internal addresses)."""
    from dfscan.urlguard import check_callback_url as check  # standard library only

    check(url, allowlist)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The value of ``X-Dfscan-Signature`` for ``body``, signed now (or at ``timestamp``)."""
    when = int(time.time()) if timestamp is None else timestamp
    return f"t={when},v1={signature(secret, body, when)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: float = DEFAULT_TOLERANCE, now: float | None = None
) -> bool:
    """True when ``header`` is a valid ``v1`` signature of ``body`` under ``secret``, made within
    ``tolerance`` seconds of ``now``."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp)
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))
