"""Foreign message text the database cannot hold is BAD_MESSAGE; only a lost connection is an outage."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from db.session import is_outage
from dfscan.exceptions import BadMessageError
from worker.messages import SourcesMessage, parse_scan_message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sources": ["/srv/a\ud800.png"]},
        {"sources": ["/srv/a.png", "\udcff"]},
        {"sources": ["/srv/a.png"], "client_ref": "ref\udc80"},
        {"sources": ["/srv/a\x00.png"]},
        {"sources": ["/srv/a.png"], "client_ref": "a\x00b"},
    ],
)
def test_text_no_database_column_can_hold_is_a_bad_message(kwargs: dict[str, object]) -> None:
    with pytest.raises(BadMessageError) as caught:
        parse_scan_message([], kwargs)
    assert caught.value.code == "BAD_MESSAGE"
    caught.value.message.encode("utf-8")  # the reason itself is storable and loggable
    assert "surrogate" in caught.value.message or "NUL" in caught.value.message


def test_non_ascii_text_that_is_valid_unicode_is_accepted() -> None:
    message = parse_scan_message([], {"sources": ["https://example.com/фото.jpg"], "client_ref": "café"})
    assert message == SourcesMessage(("https://example.com/фото.jpg",), "café", 0)


class _Orig(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (sa_exc.OperationalError("SELECT 1", {}, _Orig("server closed the connection")), True),
        (sa_exc.InterfaceError("SELECT 1", {}, _Orig("connection already closed")), True),
        (sa_exc.DisconnectionError("gone"), True),
        (sa_exc.TimeoutError("QueuePool limit reached"), True),
        (sa_exc.DBAPIError("SELECT 1", {}, _Orig("x"), connection_invalidated=True), True),
        (sa_exc.DataError("INSERT", {}, _Orig("value too long for type character varying(255)")), False),
        (sa_exc.IntegrityError("INSERT", {}, _Orig("duplicate key")), False),
        (sa_exc.ProgrammingError("INSERT", {}, _Orig("syntax error")), False),
    ],
)
def test_only_a_lost_or_refused_connection_is_an_outage(error: Exception, outage: bool) -> None:
    assert is_outage(error) is outage
