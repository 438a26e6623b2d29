"""The pinned HTTP client shared by image fetches (``worker.inference.sources.read``) and webhook
delivery (``worker.delivery``): check a URL with the SSRF guard (:mod:`dfscan.urlguard`), resolve its
host once, and connect to that very checked address.

Every address the host resolves to must be public (or allow-listed); the connection then goes to the
first of them, with the original name in ``Host:`` and, for https, in SNI and the certificate check,
so DNS rebinding cannot swap the address between check and connect. One clock bounds a request:
the DNS lookup, the connect and every read; a watchdog shuts the socket down at the deadline. Network
errors become stable dfscan errors (FETCH_TIMEOUT, FETCH_FAILED, HOST_NOT_FOUND, ...).

The policy (allow-list, timeouts, deadline) is the caller's :class:`~dfscan.urlguard.SourcePolicy`;
what is done with the connection (GET and a byte cap, POST and a bounded answer) is the caller's too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.client import HTTPException, IncompleteRead

import urllib3
import urllib3.util.ssl_match_hostname
from urllib3.connection import HTTPConnection, HTTPSConnection

from dfscan.exceptions import DfscanError, FetchError, FetchTimeoutError, HostNotFoundError
from dfscan.urlguard import IPAddress, SourcePolicy, Target, check_address, host_allowed, parse_url

__all__ = ["Clock", "open_target", "pinned_connection", "resolve", "start_clock"]

_DNS_NOT_FOUND = {
    getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, n)
}


class Clock:
    """The total deadline of one fetch."""

    def __init__(self, seconds: float, display: str) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.display = display

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> FetchTimeoutError:
        return FetchTimeoutError(f"gave up on {self.display}: no complete answer within {self.seconds:g}s")


def resolve(target: Target, policy: SourcePolicy, clock: Clock) -> IPAddress:
    """The one address to connect to, after checking every address the host resolves to."""
    if target.ip is not None:
        return target.ip  # a literal, checked by parse_url
    infos = _getaddrinfo(target, clock)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise HostNotFoundError(f"host of {target.display} has no addresses")
    if not host_allowed(target.host, policy):
        for address in addresses:
            check_address(address, target, policy)
    return addresses[0]


def _getaddrinfo(target: Target, clock: Clock) -> list[tuple]:  # type: ignore[type-arg]
    """One DNS lookup, bounded by the deadline (the lookup thread is abandoned if it is late)."""
    result: list[object] = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM))
        except Exception as exc:  # handed to the caller below
            result.append(exc)

    worker = threading.Thread(target=lookup, name="dfscan-dns", daemon=True)
    worker.start()
    worker.join(clock.remaining())
    if not result:
        raise clock.expired()
    outcome = result[0]
    if isinstance(outcome, socket.gaierror):
        if outcome.errno in _DNS_NOT_FOUND:
            raise HostNotFoundError(f"host of {target.display} does not resolve ({outcome.strerror})")
        raise FetchError(f"DNS lookup for {target.display} failed ({outcome.strerror})")
    if isinstance(outcome, BaseException):
        raise FetchError(f"DNS lookup for {target.display} failed ({type(outcome).__name__})")
    return outcome  # type: ignore[return-value]


@contextlib.contextmanager
def pinned_connection(
    target: Target, ip: IPAddress, policy: SourcePolicy, clock: Clock
) -> Iterator[tuple[HTTPConnection, threading.Event]]:
    """An open HTTP(S) connection to ``ip``, the very address the SSRF guard checked (``target``'s
    name goes in ``Host:`` and TLS SNI), with connect and read timeouts and a watchdog that cuts it
    at ``clock``'s deadline (the event is set when it did). Network errors inside the block become
    stable dfscan errors (FETCH_TIMEOUT, FETCH_FAILED, ...). Shared by image fetches and webhooks."""
    conn: HTTPConnection
    timeout = min(policy.connect_timeout, clock.remaining())
    if target.scheme == "https":
        named = target.ip is None
        conn = HTTPSConnection(
            str(ip),
            target.port,
            timeout=timeout,
            cert_reqs="CERT_REQUIRED",
            server_hostname=target.host if named else None,
            assert_hostname=target.host if named else None,
        )
    else:
        conn = HTTPConnection(str(ip), target.port, timeout=timeout)
    fired = threading.Event()
    watchdog = threading.Timer(clock.remaining(), _cut, args=(conn, fired))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.connect()
        conn.timeout = min(policy.read_timeout, clock.remaining())
        yield conn, fired
    except DfscanError:
        raise
    except Exception as exc:
        if fired.is_set():
            raise clock.expired() from None
        raise _network_error(target, ip, exc) from None
    finally:
        watchdog.cancel()
        conn.close()


def open_target(url: str, policy: SourcePolicy) -> tuple[Target, IPAddress, Clock]:
    """Check ``url`` with the SSRF guard and resolve it once: the target, the checked address to
    connect to (with :func:`pinned_connection`), and the clock of its total deadline."""
    target = parse_url(url, policy)
    clock = start_clock(target, policy)
    return target, resolve(target, policy, clock), clock


def start_clock(target: Target, policy: SourcePolicy) -> Clock:
    """A fresh total deadline (``policy.deadline``) for one more request to an opened target."""
    return Clock(policy.deadline, target.display)


def _cut(conn: HTTPConnection, fired: threading.Event) -> None:
    """Watchdog: at the deadline, shut the socket down so any blocked connect or read returns."""
    fired.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _network_error(target: Target, ip: IPAddress, exc: Exception) -> DfscanError:
    where = f"{target.display}" + ("" if target.ip is not None else f" ({ip})")
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return FetchError(f"could not connect to {where}: {_reason(exc)}")
    if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
        return FetchTimeoutError(f"timed out talking to {where}")
    incomplete = _find_cause(exc, IncompleteRead)
    if isinstance(incomplete, IncompleteRead):
        got = len(incomplete.partial) if isinstance(incomplete.partial, bytes) else incomplete.partial
        return FetchError(
            f"{where} closed the connection early: body ended after {got} bytes, short of its length"
        )
    tls = _find_cause(
        exc, (ssl.SSLError, ssl.CertificateError, urllib3.util.ssl_match_hostname.CertificateError)
    )
    if tls is not None:
        return FetchError(f"TLS with {where} failed: {str(tls)[:200]}")
    if isinstance(exc, HTTPException | urllib3.exceptions.HTTPError) and _find_cause(exc, OSError) is None:
        return FetchError(f"bad HTTP answer from {where}: {type(exc).__name__}")
    return FetchError(f"fetching {where} failed: {_reason(exc)}")


def _find_cause(
    exc: BaseException | None, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return exc
        nested = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        exc = exc.__cause__ or exc.__context__ or (nested[0] if nested else None)
        seen += 1
    return None


def _reason(exc: BaseException) -> str:
    error = _find_cause(exc, OSError)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    text = str(error or exc)[:120]
    return text.lower() if text else type(exc).__name__
