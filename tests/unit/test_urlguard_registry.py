"""The SSRF guard's decision function against every IANA special-purpose registry entry (first and
last address), the wrappings of IPv4 in IPv6, and public neighbours. Nothing is fetched."""

from __future__ import annotations

import ipaddress

import pytest

from dfscan.exceptions import BlockedDestinationError
from dfscan.urlguard import (
    IPV4_SPECIAL,
    IPV6_SPECIAL,
    SourcePolicy,
    SpecialRange,
    blocked_reason,
    parse_url,
    special_range,
)

ENTRIES = [*IPV4_SPECIAL, *IPV6_SPECIAL]
# The IPv6 blocks judged by the IPv4 address they embed (their reason names the embedded address).
WRAPPERS = {"::ffff:0:0/96": "IPv4-mapped", "64:ff9b::/96": "NAT64 of", "2002::/16": "6to4 of"}


def _ends(entry: SpecialRange) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [entry.network.network_address, entry.network.broadcast_address]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: str(e.network))
def test_every_registry_entry_is_blocked_at_its_first_and_last_address(entry: SpecialRange) -> None:
    for ip in _ends(entry):
        reason = blocked_reason(ip)
        assert reason is not None, f"{ip} ({entry.name}) is not blocked"
        wrapper = WRAPPERS.get(str(entry.network))
        if wrapper is not None:
            assert reason.startswith(wrapper), (ip, reason)
            continue
        owner = special_range(ip)
        assert owner is not None and owner.network.prefixlen >= entry.network.prefixlen, (ip, owner)
        assert reason == owner.reason, (ip, reason)
        # And through the URL parser, as the fetcher and the producer see it.
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        with pytest.raises(BlockedDestinationError):
            parse_url(f"http://{host}/a.jpg", SourcePolicy())


def test_the_tables_hold_the_registries_entries() -> None:
    assert len(IPV4_SPECIAL) == 26 and len(IPV6_SPECIAL) == 25  # 192.0.0.170/171 are one IANA row
    reachable = {str(e.network) for e in ENTRIES if e.globally_reachable}
    assert reachable == {
        "192.0.0.9/32", "192.0.0.10/32", "192.31.196.0/24", "192.52.193.0/24", "192.175.48.0/24",
        "64:ff9b::/96", "2001:1::1/128", "2001:1::2/128", "2001:1::3/128", "2001:3::/32", "2001:4:112::/48",
        "2001:20::/28", "2001:30::/28", "2620:4f:8000::/48",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        # Ranges Python's ipaddress flags miss (all refused, globally reachable or not).
        ("192.0.0.9", "Port Control Protocol Anycast, RFC 7723, IANA special-purpose"),
        ("192.0.0.10", "Traversal Using Relays around NAT Anycast, RFC 8155, IANA special-purpose"),
        ("192.0.0.200", "IETF Protocol Assignments, RFC 6890, IANA special-purpose"),
        ("192.31.196.1", "AS112-v4, RFC 7535, IANA special-purpose"),
        ("192.52.193.1", "AMT, RFC 7450, IANA special-purpose"),
        ("192.175.48.6", "Direct Delegation AS112 Service, RFC 7534, IANA special-purpose"),
        ("192.88.99.1", "Deprecated (6to4 Relay Anycast), RFC 7526, IANA special-purpose"),
        ("fec0::1", "deprecated site-local"),
        ("3fff::1", "Documentation, RFC 9637, IANA special-purpose"),
        ("2620:4f:8000::53", "Direct Delegation AS112 Service, RFC 7534, IANA special-purpose"),
        ("5f00::1", "Segment Routing (SRv6) SIDs, RFC 9602, IANA special-purpose"),
        ("100:0:0:1::1", "Dummy IPv6 Prefix, RFC 9780, IANA special-purpose"),
        ("2001:30::1", "Drone Remote ID Protocol Entity Tags (DETs) Prefix, RFC 9374, IANA special-purpose"),
        ("4000::1", "reserved"),  # outside 2000::/3
        ("224.0.0.1", "multicast"),
        ("239.255.255.255", "multicast"),
        # Wrappings of IPv4 are judged by what they carry.
        ("::ffff:192.0.0.9", "IPv4-mapped Port Control Protocol Anycast, RFC 7723, IANA special-purpose"),
        ("64:ff9b::c01f:c401", "NAT64 of AS112-v4, RFC 7535, IANA special-purpose"),
        ("2002:c0af:3001::1", "6to4 of Direct Delegation AS112 Service, RFC 7534, IANA special-purpose"),
        ("64:ff9b:1::808:808", "IPv4-IPv6 Translat., RFC 8215, IANA special-purpose"),  # local-use NAT64
        ("2001::1", "Teredo tunnel"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo tunnel"),
    ],
)
def test_ranges_python_misses_are_blocked_with_the_registry_name(address: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8", "1.1.1.1", "192.0.1.0", "192.31.195.255", "192.31.197.0", "192.52.192.255", "192.52.194.0",
        "192.175.47.255", "192.175.49.0", "192.88.98.255", "192.88.100.0", "223.255.255.255",
        "2606:4700:4700::1111", "2620:4f:7fff:ffff:ffff:ffff:ffff:ffff", "2620:4f:8001::", "3fff:1000::1",
        "2001:200::1", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2c0f:ffff::1",
    ],
)  # fmt: skip
def test_public_neighbours_of_the_ranges_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_an_allow_listed_special_range_is_opened_on_purpose() -> None:
    policy = SourcePolicy(url_allowlist=("192.0.0.9/32",))
    assert str(parse_url("http://192.0.0.9/a.jpg", policy).ip) == "192.0.0.9"
    with pytest.raises(BlockedDestinationError, match=r"192\.0\.0\.10 is not a public address \(Traversal"):
        parse_url("http://192.0.0.10/a.jpg", policy)
