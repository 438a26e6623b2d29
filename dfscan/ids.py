"""Ids as users type them: a submission, job, delivery or training-run id is a UUID.

Standard library only (the producer imports it). A malformed id is BAD_ARGUMENT with a message that
says what was expected, never Python's ``badly formed hexadecimal UUID string``.
"""

from __future__ import annotations

import uuid

from dfscan.exceptions import BadArgumentError


def parse_id(value: object, what: str = "id") -> uuid.UUID:
    """``value`` (a UUID or its text, any case, with or without dashes or braces) as a UUID."""
    if isinstance(value, uuid.UUID):
        return value
    text = str(value).strip()
    try:
        return uuid.UUID(text)
    except (ValueError, TypeError):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise BadArgumentError(
            f"{shown!r} is not a {what}: expected a UUID such as 0b5e3f6a-51c2-4f0e-9a4c-2d1e8b7c6a90"
        ) from None
