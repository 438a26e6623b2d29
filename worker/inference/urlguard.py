"""Decide whether dfscan may contact a URL: scheme, host syntax and destination address.

Everything here is static and cheap (standard library only, no DNS), so the producer can refuse a
bad URL before it is queued. The fetcher in ``sources.py`` runs the same checks again on every
address the host resolves to and on every redirect hop.

Blocked destinations are every address that is not globally routable: loopback, private,
link-local, multicast, reserved, unspecified, shared (100.64.0.0/10), and IPv6 addresses that
embed one of those (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``).
Teredo (``2001::/32``) is always blocked. Hosts are read the way browsers read them (WHATWG URL
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
from urllib.parse import urlsplit

import idna

from dfscan.exceptions import BlockedDestinationError, UnsupportedSourceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")
_HOSTNAME = re.compile(r"^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*$")
_FORBIDDEN_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
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
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    deadline: float = 30.0  # whole fetch incl. redirects, DNS and slow bodies
    max_redirects: int = 3


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
        if ip.teredo is not None:
            return "Teredo tunnel"
    for test, name in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip in _SHARED, "shared, carrier-grade NAT"),
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
