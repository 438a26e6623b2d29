"""read_source on URLs: a misbehaving local HTTP server, fake DNS, redirects, IRIs and byte caps. Local paths are
tests/unit/test_source_paths.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfscan import pinned_http
from dfscan.exceptions import (
    BlockedDestinationError,
    DfscanError,
    FetchError,
    FetchTimeoutError,
    HostNotFoundError,
    HttpStatusError,
    TooLargeError,
    TooManyRedirectsError,
    UnsupportedSourceError,
)
from tests.fixtures.http_server import OK_BYTES, LocalHttpServer, make_certificate, serve_http
from worker.inference.sources import read as sources
from worker.inference.sources.read import SourcePolicy, read_source

# A ceiling for conditions, never a time window: a busy machine makes a wait longer, not a failure.
CEILING = 60.0
LOCAL = SourcePolicy(url_allowlist=("127.0.0.1",), deadline=1.5, connect_timeout=1.0, read_timeout=1.0)
REAL_GETADDRINFO = socket.getaddrinfo


@pytest.fixture
def server() -> Iterator[LocalHttpServer]:
    with serve_http() as running:
        yield running


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[Any]]) -> list[str]:
    """Answer lookups of the names in ``answers`` (one answer per call, the last one repeats)."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        asked.append(host)
        answer = answers[host][min(len(asked) - 1, len(answers[host]) - 1)]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer()  # type: ignore[no-any-return]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answer
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def refused(kind: type[DfscanError], source: str, policy: SourcePolicy) -> DfscanError:
    """Call read_source, expecting ``kind``; return the error for more checks."""
    with pytest.raises(kind) as info:
        read_source(source, policy)
    return info.value


# --- fetching ------------------------------------------------------------------------------------


def test_fetch_returns_the_body_and_sends_safe_headers(server: LocalHttpServer) -> None:
    assert read_source(server.url("/ok.jpg"), LOCAL) == OK_BYTES
    headers = server.last_headers["/ok.jpg"]
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert headers["Accept-Encoding"] == "identity"
    assert server.hits["/ok.jpg"] == 1


def test_credentials_are_neither_sent_nor_echoed(server: LocalHttpServer) -> None:
    url = f"http://admin:hunter2@127.0.0.1:{server.port}/status/404?token=s3cr3t"
    error = refused(HttpStatusError, url, LOCAL)
    assert "Authorization" not in server.last_headers["/status/404"]
    assert error.message == f"http://127.0.0.1:{server.port}/status/404 answered HTTP 404 Not Found"
    assert "must not leak" not in error.message


@pytest.mark.parametrize(
    ("status", "permanent"), [(404, True), (403, True), (429, False), (500, False), (503, False)]
)
def test_http_errors_carry_status_and_retryability(
    server: LocalHttpServer, status: int, permanent: bool
) -> None:
    error = refused(HttpStatusError, server.url(f"/status/{status}"), LOCAL)
    assert isinstance(error, HttpStatusError)
    assert (error.code, error.status, error.permanent) == ("HTTP_STATUS", status, permanent)


def test_redirects_are_followed_within_the_limit(server: LocalHttpServer) -> None:
    assert read_source(server.url("/redirect?to=/ok.jpg&code=301"), LOCAL) == OK_BYTES
    two_hops = server.url("/redirect?to=/redirect%3Fto%3D/ok.jpg")
    assert read_source(two_hops, SourcePolicy(url_allowlist=("127.0.0.1",), max_redirects=2)) == OK_BYTES
    error = refused(
        TooManyRedirectsError,
        two_hops,
        SourcePolicy(url_allowlist=("127.0.0.1",), max_redirects=1),
    )
    assert error.code == "TOO_MANY_REDIRECTS"
    assert "more than 1 redirects" in error.message
    refused(TooManyRedirectsError, server.url("/loop"), LOCAL)
    assert server.hits["/loop"] == LOCAL.max_redirects + 1


def test_each_redirect_hop_is_checked_again(server: LocalHttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"img.test": [["127.0.0.1"]]})
    policy = SourcePolicy(url_allowlist=("img.test",), deadline=1.5)
    start = f"http://img.test:{server.port}/redirect?to="
    assert read_source(start + "/ok.jpg", policy) == OK_BYTES  # same allow-listed host: fine
    for hop in (f"http://127.0.0.1:{server.port}/ok.jpg", f"http://2130706433:{server.port}/ok.jpg"):
        error = refused(BlockedDestinationError, start + hop, policy)
        assert "redirected to a refused URL" in error.message
        assert "127.0.0.1 is not a public address (loopback)" in error.message
    error = refused(UnsupportedSourceError, start + "file:///etc/passwd", policy)
    assert "redirected to a refused URL" in error.message
    assert server.hits["/ok.jpg"] == 1
    assert server.hits["/redirect"] == 4


def test_a_trickling_body_hits_the_total_deadline(server: LocalHttpServer) -> None:
    started = time.monotonic()
    error = refused(FetchTimeoutError, server.url("/slow"), SourcePolicy(
        url_allowlist=("127.0.0.1",), deadline=1.5, read_timeout=5.0))  # fmt: skip
    # Not before the deadline; and long before the body's 100 s, each byte within the 5 s read timeout.
    assert 1.4 < time.monotonic() - started < CEILING
    assert error.code == "FETCH_TIMEOUT" and not error.permanent
    assert "within 1.5s" in error.message


def test_a_silent_server_hits_the_read_timeout(server: LocalHttpServer) -> None:
    started = time.monotonic()
    # The first byte comes after 1 s: the 0.3 s read timeout fires, long before the deadline.
    policy = SourcePolicy(url_allowlist=("127.0.0.1",), deadline=2 * CEILING, read_timeout=0.3)
    error = refused(FetchTimeoutError, server.url("/slow"), policy)
    assert time.monotonic() - started < CEILING
    assert "timed out" in error.message


def test_slow_dns_hits_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"slow.test": [lambda: time.sleep(2 * CEILING)]})  # on a daemon thread
    started = time.monotonic()
    refused(FetchTimeoutError, "http://slow.test/x.jpg", SourcePolicy(deadline=0.5))
    assert time.monotonic() - started < CEILING  # the deadline, not the lookup's end


@pytest.mark.parametrize("path", ["/endless", "/nolength"])
def test_bodies_without_a_length_are_capped(server: LocalHttpServer, path: str) -> None:
    policy = SourcePolicy(url_allowlist=("127.0.0.1",), max_bytes=1024 * 1024, deadline=5.0)
    error = refused(TooLargeError, server.url(path), policy)
    assert error.code == "TOO_LARGE" and error.permanent
    assert error.message.endswith("more than the 1048576-byte limit (limit: bytes)")


def test_a_body_is_sniffed_once_however_many_chunks_it_comes_in(
    server: LocalHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A body that looks like neither an image nor a video (media None) was sniffed again at every chunk,
    # joining all chunks so far each time: reading 20 MB took seconds and ran out a fetch deadline.
    calls: list[int] = []
    real = sources.media_kind

    def counting(head: bytes) -> str | None:
        calls.append(len(head))
        return real(head)

    monkeypatch.setattr(sources, "media_kind", counting)
    policy = SourcePolicy(url_allowlist=("127.0.0.1",), max_bytes=4 * 1024 * 1024, deadline=60.0)
    refused(TooLargeError, server.url("/nolength"), policy)  # 64 KiB chunks of b"x"
    assert calls == [16]


def test_a_declared_length_over_the_cap_is_refused_before_the_body(server: LocalHttpServer) -> None:
    # TOO_LARGE, not FETCH_TIMEOUT: the trickled body (1 byte per 0.2 s) was never waited for.
    error = refused(TooLargeError, server.url("/big"), LOCAL)
    assert f"declares {10 * 1024**3} bytes" in error.message


def test_a_lying_short_content_length_reads_only_what_was_declared(server: LocalHttpServer) -> None:
    # A result, not FETCH_TIMEOUT or TOO_LARGE: the ~50 MiB flood after the 10 bytes was not read.
    assert read_source(server.url("/lying"), LOCAL) == b"x" * 10


def test_a_body_shorter_than_its_length_is_a_transient_fetch_failure(server: LocalHttpServer) -> None:
    error = refused(FetchError, server.url("/short"), LOCAL)
    assert (error.code, error.permanent) == ("FETCH_FAILED", False)
    assert "closed the connection early" in error.message


def test_connection_refused_is_a_fetch_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = refused(FetchError, f"http://127.0.0.1:{port}/x.jpg", LOCAL)
    assert error.message == f"could not connect to http://127.0.0.1:{port}/x.jpg: connection refused"


def test_a_reset_connection_is_a_fetch_failure(server: LocalHttpServer) -> None:
    error = refused(FetchError, server.url("/reset"), LOCAL)
    assert (error.code, error.permanent) == ("FETCH_FAILED", False)
    assert error.message in {
        f"fetching http://127.0.0.1:{server.port}/reset failed: {reason}"
        for reason in ("remote end closed connection without response", "connection reset by peer")
    }
    assert server.hits["/reset"] == 1


def test_dns_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {
        "gone.test": [socket.gaierror(socket.EAI_NONAME, "Name or service not known")],
        "flaky.test": [socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")],
    })  # fmt: skip
    error = refused(HostNotFoundError, "http://gone.test/x.jpg", LOCAL)
    assert (error.code, error.message) == (
        "HOST_NOT_FOUND",
        "host of http://gone.test/x.jpg does not resolve (Name or service not known)",
    )
    error = refused(FetchError, "http://flaky.test/x.jpg", LOCAL)
    assert not error.permanent


def test_any_blocked_address_among_the_answers_blocks(
    server: LocalHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"mixed.test": [["8.8.8.8", "10.0.0.7"]]})
    error = refused(
        BlockedDestinationError,
        f"http://mixed.test:{server.port}/ok.jpg",
        SourcePolicy(),
    )
    assert (
        error.message
        == f"refused http://mixed.test:{server.port}/ok.jpg (resolves to 10.0.0.7): 10.0.0.7 is not a public address (private)"
    )


def test_the_connection_goes_to_the_address_that_was_checked(
    server: LocalHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = fake_dns(monkeypatch, {"rebind.test": [["127.0.0.1"], ["10.9.9.9"]]})
    policy = SourcePolicy(url_allowlist=("127.0.0.0/8",), deadline=1.5)
    assert read_source(f"http://rebind.test:{server.port}/ok.jpg", policy) == OK_BYTES
    assert asked == ["rebind.test"]  # one lookup: nothing could re-resolve to the second answer
    assert server.last_headers["/ok.jpg"]["Host"] == f"rebind.test:{server.port}"


def test_dns_rebinding_to_loopback_never_reaches_it(
    server: LocalHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = fake_dns(monkeypatch, {"rebind.test": [["93.184.215.14"], ["127.0.0.1"]]})
    dialed: list[tuple[str, int]] = []

    class RecordingConnection(pinned_http.HTTPConnection):
        def connect(self) -> None:  # nothing leaves the machine: record the address and refuse
            dialed.append((self.host, self.port))
            raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(pinned_http, "HTTPConnection", RecordingConnection)
    error = refused(FetchError, f"http://rebind.test:{server.port}/ok.jpg", SourcePolicy())
    assert dialed == [("93.184.215.14", server.port)]
    assert asked == ["rebind.test"]
    assert server.total_hits == 0
    assert (
        error.message
        == f"fetching http://rebind.test:{server.port}/ok.jpg (93.184.215.14) failed: connection refused"
    )


def test_loopback_spellings_never_reach_the_canary(
    server: LocalHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"evil.test": [["127.0.0.1"]], "evil6.test": [["::ffff:127.0.0.1"]]})
    port = server.port
    spellings = [
        "127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.0.1.", "0x7f.0.0.1",
        "localhost", "[::1]", "[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "0.0.0.0",
        "evil.test", "evil6.test",
    ]  # fmt: skip
    for host in spellings:
        for scheme in ("http", "https"):
            error = refused(
                BlockedDestinationError,
                f"{scheme}://{host}:{port}/ok.jpg",
                SourcePolicy(),
            )
            assert error.code == "BLOCKED_DESTINATION"
    refused(
        BlockedDestinationError,
        server.url("/redirect?to=http://10.0.0.1/"),
        SourcePolicy(),
    )
    assert server.total_hits == 0


def test_https_verifies_the_original_name_while_connecting_to_the_checked_ip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = make_certificate(tmp_path, "img.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    fake_dns(monkeypatch, {"img.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    policy = SourcePolicy(url_allowlist=("127.0.0.1",), deadline=3.0)
    with serve_http(tls=(cert, key)) as tls_server:
        assert read_source(tls_server.url("/ok.jpg", host="img.test"), policy) == OK_BYTES
        assert tls_server.sni_names == ["img.test"]
        assert tls_server.last_headers["/ok.jpg"]["Host"] == f"img.test:{tls_server.port}"
        error = refused(FetchError, tls_server.url("/ok.jpg", host="other.test"), policy)
        assert "TLS with https://other.test" in error.message
        assert tls_server.hits["/ok.jpg"] == 1


@pytest.mark.parametrize("source", ["file:///etc/passwd", "file://" + "/tmp/x.jpg", "", "   ", "gopher://x/"])
def test_non_http_urls_and_empty_sources_are_unsupported(source: str) -> None:
    policy = SourcePolicy(allowed_roots=(Path("/"),))
    error = refused(UnsupportedSourceError, source, policy)
    assert error.code == "UNSUPPORTED_SOURCE"


# --- IRIs: non-ASCII paths, hosts and redirects, fetched as a browser would ------------------------

PHOTO = "/%D1%84%D0%BE%D1%82%D0%BE.jpg"  # /фото.jpg, percent-encoded UTF-8


def test_a_non_ascii_path_and_query_are_requested_percent_encoded() -> None:
    with serve_http({PHOTO: b"photo-bytes"}) as server:
        assert read_source(server.url("/фото.jpg") + "?size=große&x=%20", LOCAL) == b"photo-bytes"
        assert read_source(server.url(PHOTO), LOCAL) == b"photo-bytes"  # already encoded: kept as it is
        assert server.hits[PHOTO] == 2
        assert server.total_hits == 2


def test_a_utf8_location_header_is_followed_like_a_browser() -> None:
    from urllib.parse import quote

    with serve_http({"/caf%C3%A9.jpg": b"cafe-utf8", "/caf%E9.jpg": b"cafe-latin1"}) as server:
        assert read_source(server.url("/redirect-utf8?to=" + quote("/café.jpg")), LOCAL) == b"cafe-utf8"
        absolute = server.url("/café.jpg")
        assert read_source(server.url("/redirect-utf8?to=" + quote(absolute)), LOCAL) == b"cafe-utf8"
        # A Location in Latin-1 bytes (not UTF-8): the byte is percent-escaped as it is.
        assert read_source(server.url("/redirect?to=" + quote("/café.jpg")), LOCAL) == b"cafe-latin1"
        assert server.hits["/caf%C3%A9.jpg"] == 2 and server.hits["/caf%E9.jpg"] == 1


def test_a_non_ascii_host_is_resolved_and_sent_as_its_idna_a_label(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(monkeypatch, {"xn--bcher-kva.test": [["127.0.0.1"]]})
    with serve_http({PHOTO: b"photo-bytes"}) as server:
        for spelling in (
            "bücher.test",
            "BÜCHER.test",
            "ｂüｃｈｅｒ。test",
        ):  # case and full-width forms map too
            url = f"http://{spelling}:{server.port}/фото.jpg"
            policy = SourcePolicy(
                url_allowlist=("bücher.test",), deadline=2.0
            )  # Unicode in the allow-list too
            assert read_source(url, policy) == b"photo-bytes"
            assert server.last_headers[PHOTO]["Host"] == f"xn--bcher-kva.test:{server.port}"
    assert asked == ["xn--bcher-kva.test"] * 3


def test_idna_is_uts46_non_transitional_and_bad_names_are_unsupported() -> None:
    from dfscan.urlguard import parse_url

    policy = SourcePolicy(url_allowlist=("0.0.0.0/0",))
    assert parse_url("http://faß.de/x", policy).host == "xn--fa-hia.de"  # not fass.de (IDNA 2003)
    assert parse_url("https://пример.рф/", policy).host == "xn--e1afmkfd.xn--p1ai"
    assert parse_url('http://example.com/ü?ü="x"#frag', policy).request_path == "/%C3%BC?%C3%BC=%22x%22"
    for url in (
        "http://example.com/a b",
        "http://a\ud800b.com/",
        "http://example.com/\ud800",
        "http://bü.my_host/",
    ):
        refused(UnsupportedSourceError, url, policy)


# --- videos: a larger byte cap, only for bytes that are a video ------------------------------------


def _video_and_lookalike() -> tuple[bytes, bytes]:
    from tests.fixtures.videos import make_clip

    video = make_clip(seconds=1.0)
    return video, b"\xff\xd8\xff\xe0" + b"j" * (len(video) - 4)  # a 'JPEG' of the same size


def test_a_video_body_may_use_the_video_cap_and_nothing_else_may() -> None:
    video, other = _video_and_lookalike()
    with serve_http({"/v": video, "/o": other}) as server:
        policy = SourcePolicy(
            url_allowlist=("127.0.0.1",), deadline=5.0, max_bytes=1000, max_video_bytes=len(video)
        )
        assert read_source(server.url("/v"), policy) == video
        error = refused(TooLargeError, server.url("/o"), policy)  # its Content-Length is under the video cap
        assert f"declares {len(other)} bytes, more than the 1000-byte limit" in error.message
        small = SourcePolicy(
            url_allowlist=("127.0.0.1",), deadline=5.0, max_bytes=1000, max_video_bytes=len(video) - 1
        )
        error = refused(TooLargeError, server.url("/v"), small)
        assert "limit for videos" in error.message


def test_a_body_without_a_length_is_cut_at_max_bytes_once_it_is_not_a_video(server: LocalHttpServer) -> None:
    policy = SourcePolicy(
        url_allowlist=("127.0.0.1",), deadline=5.0, max_bytes=1024 * 1024, max_video_bytes=40 * 1024 * 1024
    )
    error = refused(TooLargeError, server.url("/nolength"), policy)
    assert error.message.endswith("more than the 1048576-byte limit (limit: bytes)")
