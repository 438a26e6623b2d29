"""Decide whether dfscan may contact a URL: scheme, host syntax and destination address.

Everything here is static and cheap (standard library only, no DNS), so the producer can refuse a
bad URL before it is queued. The fetcher in ``sources.py`` runs the same checks again on every
address the host resolves to and on every redirect hop.

Blocked destinations are decided by the IANA special-purpose address registries (RFC 6890), which
are written out below as tables, not by Python's ``ipaddress`` flags (those miss most of
192.0.0.0/24, 192.31.196.0/24, 192.52.193.0/24, 192.175.48.0/24, 3fff::/20, 2620:4f:8000::/48 ...):
every address inside any registry entry is refused, plus IPv4 multicast (224.0.0.0/4, its own
registry) and, for IPv6, everything outside the global unicast space 2000::/3 (the IPv6 address
space registry: multicast ff00::/8, the deprecated site-local fec0::/10, ...). IPv6 addresses that
embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``)
are judged by the address they embed; Teredo (``2001::/32``) is always blocked. Python's flags stay
as a last, stricter-only check.

Some registry entries are marked *globally reachable* (anycast PCP and TURN servers 192.0.0.9/32 and
192.0.0.10/32, AS112 DNS sinks, AMT relays, ORCHIDv2 and DET identifiers, ...). dfscan refuses them
too: no image is served from them, and an anycast service address is exactly the kind of
infrastructure a server-side fetcher must not be steered at. ``DFSCAN_URL_ALLOWLIST`` opens one on
purpose. Hosts are read the way browsers read them (WHATWG URL
IPv4 parser), so ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``127.1`` all mean 127.0.0.1.

IRIs are fetched as a browser fetches them (RFC 3987, WHATWG URL): a non-ASCII host becomes its
IDNA A-label (UTS #46, non-transitional, as current browsers do: ``bücher.example`` is
``xn--bcher-kva.example``, ``faß.de`` is ``xn--fa-hia.de``), and the path and query are
percent-encoded as UTF-8 (``/фото.jpg`` is requested as ``/%D1%84%D0%BE%D1%82%D0%BE.jpg``);
existing ``%XX`` escapes are kept as they are.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import idna

from dfscan.exceptions import BlockedDestinationError, CallbackUrlTooLongError, UnsupportedSourceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")
_HOSTNAME = re.compile(r"^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*$")
_FORBIDDEN_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


@dataclass(frozen=True)
class SpecialRange:
    """One entry of an IANA special-purpose address registry."""

    network: IPNetwork
    name: str  # the registry's name for the block
    rfc: str
    globally_reachable: bool | None  # the registry's column; None: N/A or blank (terminated)
    label: str = ""  # dfscan's short reason, where messages have always used one

    @property
    def reason(self) -> str:
        return self.label or f"{self.name}, {self.rfc}, IANA special-purpose"


def _ranges(rows: tuple[tuple[str, str, str, bool | None, str], ...]) -> tuple[SpecialRange, ...]:
    out = [
        SpecialRange(ipaddress.ip_network(cidr), name, rfc, reach, label)
        for cidr, name, rfc, reach, label in rows
    ]
    return tuple(sorted(out, key=lambda r: -r.network.prefixlen))  # the most specific entry names the reason


# IANA IPv4 Special-Purpose Address Registry (iana-ipv4-special-registry, RFC 6890), every entry, with
# its "Globally Reachable" column. Newest entry: 192.0.0.10/32 (2017-02). 192.88.99.0/24 was terminated
# 2015-03 (its columns are blank) and must not be reassigned (RFC 7526): refused.
IPV4_SPECIAL = _ranges(
    (
        ("0.0.0.0/8", '"This network"', "RFC 791", False, "this network"),
        ("0.0.0.0/32", '"This host on this network"', "RFC 1122", False, "unspecified"),
        ("10.0.0.0/8", "Private-Use", "RFC 1918", False, "private"),
        ("100.64.0.0/10", "Shared Address Space", "RFC 6598", False, "shared, carrier-grade NAT"),
        ("127.0.0.0/8", "Loopback", "RFC 1122", False, "loopback"),
        ("169.254.0.0/16", "Link Local", "RFC 3927", False, "link-local"),
        ("172.16.0.0/12", "Private-Use", "RFC 1918", False, "private"),
        ("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890", False, ""),
        ("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", False, ""),
        ("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", False, ""),
        ("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", True, ""),
        ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", True, ""),
        ("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880", False, ""),
        ("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880", False, ""),
        ("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", False, ""),
        ("192.31.196.0/24", "AS112-v4", "RFC 7535", True, ""),
        ("192.52.193.0/24", "AMT", "RFC 7450", True, ""),
        ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", None, ""),
        ("192.88.99.2/32", "6a44-relay anycast address", "RFC 6751", False, ""),
        ("192.168.0.0/16", "Private-Use", "RFC 1918", False, "private"),
        ("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", True, ""),
        ("198.18.0.0/15", "Benchmarking", "RFC 2544", False, ""),
        ("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", False, ""),
        ("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", False, ""),
        ("240.0.0.0/4", "Reserved", "RFC 1112", False, "reserved"),
        ("255.255.255.255/32", "Limited Broadcast", "RFC 919", False, "broadcast"),
    )
)

# IANA IPv6 Special-Purpose Address Registry (iana-ipv6-special-registry, RFC 6890), every entry.
# Newest entry: 100:0:0:1::/64 (RFC 9780, 2025-04). The IPv4-mapped, NAT64 and 6to4 blocks are
# judged by the address they embed before this table is consulted (see blocked_reason);
# 2001:10::/28 was terminated 2014-03 (blank columns): refused.
IPV6_SPECIAL = _ranges(
    (
        ("::1/128", "Loopback Address", "RFC 4291", False, "loopback"),
        ("::/128", "Unspecified Address", "RFC 4291", False, "unspecified"),
        ("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", False, ""),
        ("64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052", True, ""),
        ("64:ff9b:1::/48", "IPv4-IPv6 Translat.", "RFC 8215", False, ""),
        ("100::/64", "Discard-Only Address Block", "RFC 6666", False, ""),
        ("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", False, ""),
        ("2001::/23", "IETF Protocol Assignments", "RFC 2928", False, ""),
        ("2001::/32", "TEREDO", "RFC 4380", None, "Teredo tunnel"),
        ("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", True, ""),
        ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", True, ""),
        ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", True, ""),
        ("2001:2::/48", "Benchmarking", "RFC 5180", False, ""),
        ("2001:3::/32", "AMT", "RFC 7450", True, ""),
        ("2001:4:112::/48", "AS112-v6", "RFC 7535", True, ""),
        ("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", None, ""),
        ("2001:20::/28", "ORCHIDv2", "RFC 7343", True, ""),
        ("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", True, ""),
        ("2001:db8::/32", "Documentation", "RFC 3849", False, ""),
        ("2002::/16", "6to4", "RFC 3056", None, ""),
        ("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", True, ""),
        ("3fff::/20", "Documentation", "RFC 9637", False, ""),
        ("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", False, ""),
        ("fc00::/7", "Unique-Local", "RFC 4193", False, "private"),
        ("fe80::/10", "Link-Local Unicast", "RFC 4291", False, "link-local"),
    )
)


def special_range(ip: IPAddress) -> SpecialRange | None:
    """The most specific IANA special-purpose registry entry holding ``ip``, if any."""
    table = IPV4_SPECIAL if ip.version == 4 else IPV6_SPECIAL
    return next((entry for entry in table if ip in entry.network), None)


_DEFAULT_PORTS = {"http": 80, "https": 443}
# Beside non-ASCII, what the WHATWG URL standard percent-encodes in a path and in a special URL's
# query (controls and spaces are refused before: see _FORBIDDEN_URL_CHARS).
_PATH_ESCAPES = frozenset('"<>`{}')
_QUERY_ESCAPES = frozenset("\"<>'")


@dataclass(frozen=True)
class SourcePolicy:
    """What ``read_source`` may read, and how long and how much it may take."""

    allowed_roots: tuple[Path, ...] = ()  # directories paths may be read from; empty = no paths at all
    url_allowlist: tuple[
        str, ...
    ] = ()  # hosts or CIDRs allowed even if internal ("img.internal", "10.0.0.0/8")
    max_bytes: int = 20 * 1024 * 1024
    # A larger cap for bodies whose first bytes are a video (MP4/MOV, WebM/MKV); None: videos get max_bytes.
    max_video_bytes: int | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    deadline: float = 30.0  # whole fetch incl. redirects, DNS and slow bodies
    max_redirects: int = 3
    # Where ``upload:sha256:...`` sources are read from (a dfscan.uploads.UploadStore); None: refused.
    uploads: Any = None


@dataclass(frozen=True)
class Target:
    """One checked http(s) URL, split into what the fetcher needs."""

    scheme: str
    host: str  # ASCII, lower case, no trailing dot, no brackets
    port: int
    ip: IPAddress | None  # set when the host is an IP literal (in any spelling)
    request_path: str  # path and query, never empty
    host_header: str

    @property
    def display(self) -> str:
        return f"{self.scheme}://{self.host_header}{_shorten(self.request_path.split('?', 1)[0])}"


def is_url(source: str) -> bool:
    """True when ``source`` starts with a URL scheme (``http:``, ``file:``, ``data:`` ...).

    Only http(s) URLs are fetchable; any other scheme is UNSUPPORTED_SOURCE. A path whose first
    component contains a colon must be written ``./name:x.jpg``.
    """
    return bool(_SCHEME.match(source))


def check_url(url: str, policy: SourcePolicy) -> None:
    """Refuse a URL that is not http(s), has a malformed host, or names a blocked IP (no DNS)."""
    parse_url(url, policy)


def parse_url(url: str, policy: SourcePolicy) -> Target:
    """Split and statically check ``url``; raise UNSUPPORTED_SOURCE or BLOCKED_DESTINATION."""
    match = _SCHEME.match(url)
    scheme = match.group(0)[:-1].lower() if match else ""
    if scheme not in _DEFAULT_PORTS:
        what = f"the {scheme}: scheme" if scheme else "a string that is not a URL"
        raise UnsupportedSourceError(f"refused {what}: only http and https URLs can be fetched")
    if _FORBIDDEN_URL_CHARS.search(url):
        raise UnsupportedSourceError("refused a URL containing spaces, control characters or '\\'")
    try:
        parts = urlsplit(url)
        raw_host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise UnsupportedSourceError(f"refused a malformed URL ({exc})") from None
    if not url[len(scheme) + 1 :].startswith("//") or not raw_host:
        raise UnsupportedSourceError("refused a URL without a host")
    host, ip = _parse_host(raw_host)
    shown_host = f"[{host}]" if ip is not None and ip.version == 6 else host
    host_header = shown_host if port == _DEFAULT_PORTS[scheme] else f"{shown_host}:{port}"
    path = _percent_encode(parts.path or "/", _PATH_ESCAPES)
    query = f"?{_percent_encode(parts.query, _QUERY_ESCAPES)}" if parts.query else ""
    target = Target(scheme, host, port, ip, path + query, host_header)
    if host_allowed(host, policy):
        return target
    if ip is not None:
        check_address(ip, target, policy)
    elif host == "localhost" or host.endswith(".localhost"):
        raise BlockedDestinationError(f"refused {target.display}: localhost is a loopback name")
    return target


# A callback URL is copied into every event row of its submission: 2,048 characters is what browsers
# and CDNs reliably carry, and far more than any receiver's address needs.
MAX_CALLBACK_URL_LENGTH = 2048
# userinfo in any scheme://user:password@host URL, in a URL or in free text (task arguments, logs).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s@'\"]+@")


def check_callback_url(url: object, allowlist: tuple[str, ...] = ()) -> Target:
    """The one decision on a callback URL at every intake (`dfscan submit`, ScanClient, foreign Celery
    messages): a string of at most MAX_CALLBACK_URL_LENGTH characters (CALLBACK_URL_TOO_LONG), http or
    https without spaces, CR, LF or other control characters and with a well-formed host
    (UNSUPPORTED_SOURCE), and no internal IP literal or ``localhost`` unless ``allowlist`` names it
    (BLOCKED_DESTINATION). Host names are resolved and checked again at every delivery."""
    if not isinstance(url, str):
        raise UnsupportedSourceError(f"callback URL must be a string, not {type(url).__name__}")
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        raise CallbackUrlTooLongError(
            f"callback URL is {len(url)} characters long; at most {MAX_CALLBACK_URL_LENGTH} are accepted"
        )
    try:
        return parse_url(url, SourcePolicy(url_allowlist=allowlist))
    except (UnsupportedSourceError, BlockedDestinationError) as exc:
        raise type(exc)(f"callback URL {exc.message}") from None


def mask_url_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``
    (``https://user:secret@host/x`` -> ``https://***@host/x``); anything else unchanged."""
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


def host_allowed(host: str, policy: SourcePolicy) -> bool:
    """True when ``host`` is named in the allow-list (case-insensitive, trailing dot ignored; an entry
    written in Unicode matches its IDNA A-label)."""
    return host in {_allow_name(entry) for entry in policy.url_allowlist}


def _allow_name(entry: str) -> str:
    name = entry.strip().lower().rstrip(".")
    try:
        return name if name.isascii() else idna_host(name)
    except UnicodeError:
        return name


def idna_host(name: str) -> str:
    """A host name as browsers send it: ASCII lower case, non-ASCII labels as IDNA A-labels (UTS #46
    non-transitional processing, which also maps full-width letters and dots). Raises UnicodeError."""
    if name.isascii():
        return name.lower()
    try:
        return idna.encode(name, uts46=True, transitional=False).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise UnicodeError(str(exc)) from None


def _percent_encode(text: str, escapes: frozenset[str]) -> str:
    """Percent-encode, as UTF-8, every non-ASCII character and the ASCII ones in ``escapes``."""
    if text.isascii() and not escapes.intersection(text):
        return text
    out = []
    for char in text:
        if char in escapes or not char.isascii():
            try:
                out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
            except UnicodeEncodeError:
                raise UnsupportedSourceError("refused a URL that is not valid Unicode text") from None
        else:
            out.append(char)
    return "".join(out)


def check_address(ip: IPAddress, target: Target, policy: SourcePolicy) -> None:
    """Raise BLOCKED_DESTINATION unless ``ip`` is public or inside an allow-listed network."""
    if _address_allowed(ip, policy):
        return
    reason = blocked_reason(ip)
    if reason is not None:
        shown = "" if target.ip is not None else f" (resolves to {ip})"
        raise BlockedDestinationError(
            f"refused {target.display}{shown}: {ip} is not a public address ({reason})"
        )


def blocked_reason(ip: IPAddress) -> str | None:
    """Why dfscan must not contact ``ip``, or None when it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            inner = blocked_reason(ip.ipv4_mapped)
            return None if inner is None else f"IPv4-mapped {inner}"
        if ip in _NAT64:
            inner = blocked_reason(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            return None if inner is None else f"NAT64 of {inner}"
        if ip.sixtofour is not None:
            inner = blocked_reason(ip.sixtofour)
            return None if inner is None else f"6to4 of {inner}"
    entry = special_range(ip)
    if entry is not None:
        return entry.reason
    if ip in _IPV4_MULTICAST or ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _IPV6_GLOBAL_UNICAST:
        return "deprecated site-local" if ip.is_site_local else "reserved"
    # Stricter only: Python's own tables (a newer Python may know an entry this table lacks).
    for test, name in (
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    ):
        if test:
            return name
    return None


def allowlist_networks(policy: SourcePolicy) -> list[IPNetwork]:
    """The allow-list entries that are IP addresses or CIDRs."""
    nets: list[IPNetwork] = []
    for entry in policy.url_allowlist:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return nets


def _address_allowed(ip: IPAddress, policy: SourcePolicy) -> bool:
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(c in net for c in candidates for net in allowlist_networks(policy) if c.version == net.version)


def _parse_host(raw: str) -> tuple[str, IPAddress | None]:
    """Return (normalised host, IP or None). ``raw`` is urlsplit's lower-cased, unbracketed host."""
    if ":" in raw:
        if "%" in raw:
            raise UnsupportedSourceError("refused an IPv6 URL host with a zone index")
        try:
            address = ipaddress.IPv6Address(raw)
        except ValueError:
            raise UnsupportedSourceError(f"refused a malformed IPv6 URL host {_shorten(raw)!r}") from None
        return str(address), address
    try:
        host = idna_host(raw).rstrip(".")
    except UnicodeError:
        raise UnsupportedSourceError(f"refused a malformed URL host {_shorten(raw)!r}") from None
    if not host or len(host) > 253 or not _HOSTNAME.match(host):
        raise UnsupportedSourceError(f"refused a malformed URL host {_shorten(raw)!r}")
    ipv4 = _parse_ipv4(host)
    return (host, None) if ipv4 is None else (str(ipv4), ipv4)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The WHATWG URL IPv4 parser: None for a domain name, else the address (or UNSUPPORTED_SOURCE)."""
    parts = host.split(".")
    last = parts[-1]
    if not (last.isdigit() or (last[:2] == "0x" and all(c in "0123456789abcdef" for c in last[2:]))):
        return None
    numbers: list[int] = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            break
        numbers.append(number)
    value = numbers[-1] if len(numbers) == len(parts) <= 4 else -1
    if value < 0 or value >= 256 ** (5 - len(numbers)) or any(n > 255 for n in numbers[:-1]):
        raise UnsupportedSourceError(f"refused a malformed numeric URL host {_shorten(host)!r}")
    for index, number in enumerate(numbers[:-1]):
        value += number * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


def _parse_ipv4_number(part: str) -> int | None:
    try:
        if part[:2] == "0x":
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
