"""Static URL checks: schemes, host spellings, blocked address ranges, the allow-list (no DNS)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

from dfscan.exceptions import BlockedDestinationError, UnsupportedSourceError
from dfscan.urlguard import SourcePolicy, blocked_reason, check_url, is_url, parse_url

OPEN = SourcePolicy()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.jpg",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0x7F.1/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://127.0.0.1./",
        "http://017700000001/",
        "HTTP://LOCALHOST/",
        "http://img.localhost:8080/",
        "http://[::1]/",
        "http://[0:0:0:0:0:0:0:1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[64:ff9b::127.0.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[2002:a00:1::5]/",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
        "http://0.0.0.0/",
        "http://0/",
        "http://[::]/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://[ff02::1]/",
        "http://240.0.0.1/",
        "http://255.255.255.255/",
        "https://user:pw@10.0.0.1:8443/a",
    ],
)
def test_internal_destinations_are_blocked_statically(url: str) -> None:
    with pytest.raises(BlockedDestinationError) as info:
        check_url(url, OPEN)
    assert info.value.code == "BLOCKED_DESTINATION"
    assert info.value.permanent
    assert "refused" in info.value.message


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://2130706433/", "127.0.0.1"),
        ("http://0x7f000001/", "127.0.0.1"),
        ("http://0177.0.0.1/", "127.0.0.1"),
        ("http://127.1/", "127.0.0.1"),
        ("http://10.1/", "10.0.0.1"),
        ("http://192.168.257/", "192.168.1.1"),
        ("http://0xa9.0376.43518/", "169.254.169.254"),
    ],
)
def test_numeric_spellings_are_read_like_a_browser(url: str, address: str) -> None:
    with pytest.raises(BlockedDestinationError, match=f"{address} is not a public address"):
        check_url(url, OPEN)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("100.64.0.1", "shared, carrier-grade NAT"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("64:ff9b::a9fe:a9fe", "NAT64 of link-local"),
        ("2002:c0a8:101::1", "6to4 of private"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo tunnel"),
        ("::", "unspecified"),
        ("ff02::1", "multicast"),
        ("::7f00:1", "reserved"),
    ],
)
def test_blocked_reason_names_the_range(address: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_public_urls_pass_and_are_split() -> None:
    target = parse_url("HTTPS://User:Secret@Img.Example.COM.:8443/a/b.jpg?sig=abc#frag", OPEN)
    assert (target.scheme, target.host, target.port, target.ip) == ("https", "img.example.com", 8443, None)
    assert target.request_path == "/a/b.jpg?sig=abc"
    assert target.host_header == "img.example.com:8443"
    assert target.display == "https://img.example.com:8443/a/b.jpg"
    literal = parse_url("http://[2606:4700:4700::1111]/", OPEN)
    assert literal.host_header == "[2606:4700:4700::1111]"
    assert literal.ip == ipaddress.ip_address("2606:4700:4700::1111")
    assert parse_url("http://xn--bcher-kva.example/", OPEN).host == "xn--bcher-kva.example"
    assert parse_url("http://bücher.example/", OPEN).host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE://localhost/etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "ftp://example.com/x.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "dict://example.com:11211/stat",
        "javascript:alert(1)",
    ],
)
def test_other_schemes_are_unsupported(url: str) -> None:
    with pytest.raises(UnsupportedSourceError) as info:
        check_url(url, OPEN)
    assert info.value.code == "UNSUPPORTED_SOURCE"
    assert "only http and https" in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "http:example.com/x",
        "http:///x.jpg",
        "http://exa mple.com/",
        "http://example.com\\@127.0.0.1/",
        "http://%31%32%37.0.0.1/",
        "http://1.2.3.4.5/",
        "http://256.1.1.1/",
        "http://1.2.3.0x100000000/",
        "http://0x7g.1/",
        "http://[fe80::1%25eth0]/",
        "http://[::1/",
        "http://example.com:99999/",
        "http://a..b/",
        "not a url at all",
    ],
)
def test_malformed_urls_are_unsupported(url: str) -> None:
    with pytest.raises(UnsupportedSourceError):
        check_url(url, OPEN)


def test_allow_list_accepts_hosts_and_cidrs() -> None:
    policy = SourcePolicy(url_allowlist=("IMG.internal.", "10.0.0.0/8", "::1/128", "127.0.0.1"))
    check_url("http://img.internal/x.jpg", policy)
    check_url("http://10.9.8.7:8080/x.jpg", policy)
    check_url("http://012.1/x.jpg", policy)  # 10.0.0.1
    check_url("http://[::1]:8080/", policy)
    check_url("http://2130706433/", policy)
    check_url("http://[::ffff:127.0.0.1]/", policy)
    with pytest.raises(BlockedDestinationError, match="192.168.0.1 is not a public address"):
        check_url("http://192.168.0.1/", policy)
    with pytest.raises(BlockedDestinationError):
        check_url("http://other.localhost/", policy)


def test_messages_never_echo_credentials_or_queries() -> None:
    with pytest.raises(BlockedDestinationError) as info:
        check_url("http://admin:hunter2@10.0.0.1/x?token=s3cr3t", OPEN)
    assert "hunter2" not in info.value.message
    assert "s3cr3t" not in info.value.message
    assert info.value.message == "refused http://10.0.0.1/x: 10.0.0.1 is not a public address (private)"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("http://x/", True),
        ("HTTPS://x/", True),
        ("file:///etc/passwd", True),
        ("data:image/png;base64,AA", True),
        ("/srv/images/a.jpg", False),
        ("images/a.jpg", False),
        ("./a:b.jpg", False),
        ("", False),
    ],
)
def test_is_url(source: str, expected: bool) -> None:
    assert is_url(source) is expected


def test_urlguard_imports_nothing_heavy() -> None:
    code = (
        "import sys, dfscan.urlguard; "
        "bad = [m for m in ('torch', 'transformers', 'PIL', 'urllib3', 'celery') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
