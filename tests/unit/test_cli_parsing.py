"""What users type for dates and ids, read the same way by every command."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from dfscan.cli.errors import error_line, parse_since
from dfscan.exceptions import BadArgumentError
from dfscan.ids import parse_id

NOW = datetime(2026, 12, 4, 15, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today", datetime(2026, 12, 4, tzinfo=timezone.utc)),
        ("Yesterday", datetime(2026, 12, 3, tzinfo=timezone.utc)),
        ("24h", NOW - timedelta(hours=24)),
        ("90s", NOW - timedelta(seconds=90)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        ("2026-11-26", datetime(2026, 11, 26, tzinfo=timezone.utc)),
        ("2026-11-26T08:00:00Z", datetime(2026, 11, 26, 8, tzinfo=timezone.utc)),
        ("2026-11-26T08:00:00+02:00", datetime(2026, 11, 26, 6, tzinfo=timezone.utc)),
    ],
)
def test_since_forms(text: str, expected: datetime) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterdayish", "", "24", "-1d", "2026-13-01", "last week"])
def test_bad_since_is_bad_argument(text: str) -> None:
    with pytest.raises(BadArgumentError, match="not a date"):
        parse_since(text, now=NOW)


def test_ids_any_spelling_and_malformed_ones() -> None:
    value = uuid.uuid4()
    for spelling in (str(value), str(value).upper(), value.hex, f"{{{value}}}", f" {value} "):
        assert parse_id(spelling) == value
    for bad in ("abc", str(value)[:-1], "x" * 500, ""):
        with pytest.raises(BadArgumentError, match="not a submission id") as caught:
            parse_id(bad, "submission id")
        assert len(caught.value.message) < 200 and caught.value.code == "BAD_ARGUMENT"


def test_an_error_is_one_line_without_url_credentials() -> None:
    line = error_line("X", "first\nsecond  https://u:pw@h.example/x")
    assert line == "error X: first second https://***@h.example/x"
