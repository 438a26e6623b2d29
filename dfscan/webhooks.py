"""Webhook events and their signatures: what a receiver needs to verify a dfscan POST.

Standard library only, so a backend can ``from dfscan.webhooks import verify`` without the worker.

Every POST carries::

    X-Dfscan-Event-Id: <uuid>                 the same on every redelivery of one event
    X-Dfscan-Event: job.completed | submission.completed | job.reviewed
    X-Dfscan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

Stripe's scheme: the timestamp is signed with the body, so a captured request cannot be replayed
later than the receiver's tolerance; ``v1`` names the scheme so it can change without breaking
receivers. Compare with a constant-time function. :func:`verify` never raises and refuses
anything but ASCII digits in ``t``, 64 lowercase hex digits in ``v1``, and an empty secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

JOB_COMPLETED = "job.completed"
SUBMISSION_COMPLETED = "submission.completed"
# A reviewer's decision on a job's verdict (the review console, ``POST /v1/jobs/{id}/review``); sent to the
# job's submission's callback URL, once per decision.
JOB_REVIEWED = "job.reviewed"
EVENTS = (JOB_COMPLETED, SUBMISSION_COMPLETED, JOB_REVIEWED)

SIGNATURE_HEADER = "X-Dfscan-Signature"
EVENT_ID_HEADER = "X-Dfscan-Event-Id"
EVENT_HEADER = "X-Dfscan-Event"

# How old a signature a receiver accepts by default (Stripe's default is 5 minutes).
DEFAULT_TOLERANCE = 300.0

# A timestamp is ASCII digits only (``str.isdigit`` and ``int`` also take "²", "١٢", "1_0", " +1").
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_events(value: str | None) -> tuple[str, ...]:
    """``"job.completed,submission.completed"`` -> the event names, checked; None or "" -> all of them."""
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


def signature_header(secret: str | Sequence[str], body: bytes, timestamp: int | None = None) -> str:
    """The value of ``X-Dfscan-Signature`` for ``body``, signed now (or at ``timestamp``): one ``v1`` per
    secret (a tenant's new and previous secret during a rotation; a receiver accepts either)."""
    when = int(time.time()) if timestamp is None else timestamp
    secrets = [secret] if isinstance(secret, str) else list(secret)
    return f"t={when}," + ",".join(f"v1={signature(one, body, when)}" for one in secrets)


def verify(
    secret: str, header: str, body: bytes, *, tolerance: float = DEFAULT_TOLERANCE, now: float | None = None
) -> bool:
    """True when ``header`` is a valid ``v1`` signature of ``body`` under ``secret``, made within
    ``tolerance`` seconds of ``now``. Never raises: anything else is False.

    Strict on purpose: ``t`` is 1-12 ASCII digits, once (no sign, spaces, ``_`` or other scripts'
    digits, all of which ``int()`` would take); ``v1`` is 64 lowercase hex digits, compared in constant
    time as bytes; several ``v1`` are allowed (a key rotation); an empty or blank ``secret`` is
    refused (anyone can sign with it)."""
    try:
        return _verify(secret, header, body, tolerance, time.time() if now is None else now)
    except Exception:  # a hostile header must never become a 500 in the receiver
        return False


def _verify(secret: str, header: str, body: bytes, tolerance: float, now: float) -> bool:
    if not isinstance(secret, str) or not secret.strip() or not isinstance(header, str):
        return False
    if not isinstance(body, bytes | bytearray | memoryview):
        return False
    stamps: list[str] = []
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.partition("=")
        if key == "t":
            stamps.append(value)
        elif key == "v1":
            candidates.append(value)
    if len(stamps) != 1 or not _TIMESTAMP.fullmatch(stamps[0]):
        return False
    timestamp = int(stamps[0])
    if not abs(now - timestamp) <= tolerance:  # also False for a NaN tolerance
        return False
    expected = signature(secret, bytes(body), timestamp).encode("ascii")
    matches = [hmac.compare_digest(expected, c.encode("ascii")) for c in candidates if _HEX64.fullmatch(c)]
    return any(matches)


def receiver_of(url: str) -> str:
    """Who receives ``url``'s POSTs: ``scheme://host:port`` (lowercase, default port filled in, no
    credentials, no path): the unit of the delivery loop's per-receiver limits and circuit breaker.
    Never raises; a URL that does not parse is its own receiver."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        host = parts.hostname or ""
    except ValueError:
        return url[:300]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
