"""Read an untrusted image source: an http(s) URL or a file under an allowed root, as bytes.

URLs: every hop is checked (``urlguard``), the host is resolved once and every address it resolves
to must be public (or allow-listed); the connection then goes to that very checked address, with
the original name in ``Host:`` and, for https, in SNI and the certificate check, so DNS rebinding
cannot swap the address between check and connect (the client is :mod:`dfscan.pinned_http`, shared
with webhook delivery). Redirects are followed by hand, each re-checked.
A watchdog shuts the socket down at the total deadline, so slow DNS, a trickled header or a
trickled body all end as FETCH_TIMEOUT. Bodies are streamed under a byte cap; a declared
Content-Length over the cap is refused before the body is read. Content-Encoding is refused
(``Accept-Encoding: identity``) so the cap counts the bytes the decoder will see. Credentials in a
URL are never sent and never appear in messages; nor do query strings or response bodies.

A body shorter than its Content-Length is FETCH_FAILED (transient): the bytes we hold are not the
image the server meant, and the usual cause is a dropped connection that a retry heals. A server
that always truncates fails the job with FETCH_FAILED once its attempts run out.

Byte caps: ``max_bytes``, or ``max_video_bytes`` for a body whose first 16 bytes are a video container
(:mod:`worker.inference.sources.media`). The kind is decided from the bytes as they arrive, never from a name or
a Content-Type: until 16 bytes are in, the larger cap holds; from then on the cap of that kind does, and
a declared Content-Length or file size over it is refused before more is read. So a video can be as
large as its cap while anything else claiming to be big is cut at ``max_bytes``.

Paths: resolved with ``realpath`` (relative ones against the cwd) and refused unless inside an
allowed root and outside /proc, /sys and /dev. The file is then opened component by component
from the root with ``O_NOFOLLOW`` (a symlink swapped in after the check is refused) and checked
with ``fstat`` on the open descriptor: only regular files are read, at most ``max_bytes + 1``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import urllib3

from dfscan.exceptions import (
    DfscanError,
    FetchError,
    HttpStatusError,
    PathNotAllowedError,
    SourceNotFoundError,
    TooLargeError,
    TooManyRedirectsError,
    UnsupportedSourceError,
)
from dfscan.pinned_http import Clock, pinned_connection, resolve, start_clock
from dfscan.uploads import digest_of, is_upload_source
from dfscan.urlguard import IPAddress, SourcePolicy, Target, check_url, is_url, parse_url
from dfscan.verdicts import UNKNOWN
from worker.inference.sources.media import SNIFF_BYTES, media_kind, video_container

__all__ = ["SourcePolicy", "check_url", "failed_media", "is_url", "read_source"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")


def read_source(source: str, policy: SourcePolicy) -> bytes:
    """http(s) URL or local path -> bytes, or raise a dfscan.exceptions.DfscanError subclass.

    The error's ``media`` says what the body's first bytes showed before it failed (``"video"`` or
    ``"image"``: a video over its byte cap, a body cut short), or None when none arrived."""
    seen = _Seen()
    try:
        if not source or not source.strip():
            raise UnsupportedSourceError("refused an empty source: give an http(s) URL or a file path")
        if source[:5].lower() == "file:":
            return _read_path(_non_utf8_path(source), policy, seen, shown=source)
        if is_upload_source(source):
            return _read_upload(source, policy, seen)
        if is_url(source):
            return _fetch(source, policy, seen)
        return _read_path(source, policy, seen)
    except DfscanError as exc:
        exc.media = seen.media
        raise


def _read_upload(source: str, policy: SourcePolicy, seen: _Seen) -> bytes:
    """An upload of the HTTP API, by digest from the upload store (never a path: the store is not an
    allowed root), under the same byte caps as any other source."""
    if policy.uploads is None:
        raise UnsupportedSourceError("refused an upload source: this worker has no upload store")
    digest = digest_of(source)
    data: bytes = policy.uploads.read(digest, max(policy.max_bytes, policy.max_video_bytes or 0))
    seen.sniff(data[:SNIFF_BYTES])
    cap = _Cap(policy, f"upload {digest[:12]}...")
    cap.decide(data[:SNIFF_BYTES])
    if len(data) > cap.limit:
        raise TooLargeError(f"upload {digest[:12]}... has {len(data)} bytes, more than the {cap.describe()}")
    return data


def failed_media(exc: BaseException) -> str:
    """The ``media`` of a verdict whose read failed with ``exc``: what the body's first bytes showed
    (``"video"``, ``"image"``), else ``"unknown"`` (nothing arrived: DNS, connect, HTTP status, path)."""
    return (exc.media if isinstance(exc, DfscanError) else None) or UNKNOWN


class _Seen:
    """The kind of body a read learnt from its first bytes (None until 16 of them arrived, or when
    they look like neither an image nor a video). Sniffed once: a body is read in many chunks."""

    media: str | None = None
    sniffed: bool = False

    def sniff(self, head: bytes) -> None:
        self.media = media_kind(head)
        self.sniffed = True


# --- URLs ----------------------------------------------------------------------------------------


def _fetch(url: str, policy: SourcePolicy, seen: _Seen) -> bytes:
    target = parse_url(url, policy)
    clock = start_clock(target, policy)
    hops = 0
    while True:
        ip = resolve(target, policy, clock)
        answer = _fetch_once(target, ip, policy, clock, seen)
        if isinstance(answer, bytes):
            return answer
        hops += 1
        if hops > policy.max_redirects:
            raise TooManyRedirectsError(
                f"gave up on {clock.display}: more than {policy.max_redirects} redirects"
            )
        target = _follow(target, answer, policy)


def _follow(target: Target, location: str, policy: SourcePolicy) -> Target:
    here = f"{target.scheme}://{target.host_header}{target.request_path}"
    try:
        return parse_url(urljoin(here, location.strip()), policy)
    except (UnsupportedSourceError, ValueError) as exc:
        message = exc.message if isinstance(exc, DfscanError) else str(exc)
        raise UnsupportedSourceError(f"{target.display} redirected to a refused URL: {message}") from None
    except DfscanError as exc:
        raise type(exc)(f"{target.display} redirected to a refused URL: {exc.message}") from None


def _fetch_once(
    target: Target, ip: IPAddress, policy: SourcePolicy, clock: Clock, seen: _Seen
) -> bytes | str:
    """GET ``target`` from ``ip``: the body, or the Location of a redirect."""
    log.debug("fetching %s from %s", target.display, ip)
    with pinned_connection(target, ip, policy, clock) as (conn, fired):
        conn.request(
            "GET",
            target.request_path,
            headers={
                "Host": target.host_header,
                "User-Agent": "dfscan",
                "Accept": "image/*, */*;q=0.5",
                "Accept-Encoding": "identity",
                "Connection": "close",
            },
            preload_content=False,
            decode_content=False,
        )
        response = conn.getresponse()
        return _handle(target, response, policy, fired, clock, seen)


def _handle(
    target: Target,
    response: urllib3.HTTPResponse,
    policy: SourcePolicy,
    fired: threading.Event,
    clock: Clock,
    seen: _Seen,
) -> bytes | str:
    status = response.status
    if status in _REDIRECT_STATUSES and response.headers.get("Location"):
        return _location(str(response.headers["Location"]))
    if not 200 <= status < 300:
        raise HttpStatusError(
            f"{target.display} answered HTTP {status} {(response.reason or '')[:60]}".strip(), status=status
        )
    declared = response.length_remaining
    cap = _Cap(policy, target.display)
    cap.check_declared(declared)
    chunks: list[bytes] = []
    total = 0
    while True:
        data = response.read1(min(_CHUNK, cap.limit + 1 - total))
        if fired.is_set():
            raise clock.expired()
        if not data:
            return b"".join(chunks)
        total += len(data)
        chunks.append(data)
        if not seen.sniffed and total >= SNIFF_BYTES:
            seen.sniff(b"".join(chunks)[:SNIFF_BYTES])
        if not cap.decided and total >= SNIFF_BYTES:
            cap.decide(b"".join(chunks)[:SNIFF_BYTES])
            cap.check_declared(declared)
        if total > cap.limit:
            raise TooLargeError(f"{target.display} sent more than the {cap.describe()}")


class _Cap:
    """The byte cap of one body: the larger of the two caps until its first bytes tell its kind."""

    def __init__(self, policy: SourcePolicy, display: str) -> None:
        self.policy = policy
        self.display = display
        video = policy.max_video_bytes
        self.decided = video is None or video <= policy.max_bytes
        self.limit = policy.max_bytes if self.decided else int(video or 0)
        self.video = False

    def decide(self, head: bytes) -> None:
        self.video = video_container(head) is not None
        if not self.video:
            self.limit = self.policy.max_bytes
        self.decided = True

    def describe(self) -> str:
        if not self.decided:
            return f"{self.limit}-byte limit for videos ({self.policy.max_bytes} for anything else)"
        if self.video:
            return f"{self.limit}-byte limit for videos"
        return f"{self.limit}-byte limit"

    def check_declared(self, declared: int | None) -> None:
        if declared is not None and declared > self.limit:
            raise TooLargeError(f"{self.display} declares {declared} bytes, more than the {self.describe()}")


def _location(header: str) -> str:
    """A Location header as text. http.client hands header bytes over as Latin-1; servers send UTF-8
    (``Location: /café.jpg``), which becomes text again here and is percent-encoded by ``parse_url``
    like any IRI. Bytes that are not UTF-8 are percent-escaped as they are."""
    raw = header.encode("latin-1", errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(byte) if byte < 0x80 else f"%{byte:02X}" for byte in raw)


# --- paths ---------------------------------------------------------------------------------------


def _non_utf8_path(url: str) -> str:
    """The path a ``file:`` URL spells, when it spells a name that is not UTF-8 (the only ``file:``
    URLs dfscan reads: see ``producer.sources.path_source``); any other is UNSUPPORTED_SOURCE."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise UnsupportedSourceError("refused the file: scheme: only http and https URLs can be fetched")
    raw = unquote_to_bytes(parts.path)
    if b"\x00" in raw:
        raise UnsupportedSourceError("refused a path containing a NUL byte")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        if raw.startswith(b"/"):
            return os.fsdecode(raw)  # surrogateescape: os.open gets the very bytes back
    raise UnsupportedSourceError(
        "refused the file: scheme: give the path itself (file: URLs only spell file names that are not UTF-8)"
    )


def _read_path(source: str, policy: SourcePolicy, seen: _Seen, *, shown: str | None = None) -> bytes:
    """Read a local file; messages name it as ``shown`` (the source text) when that differs."""
    if "\x00" in source:
        raise UnsupportedSourceError("refused a path containing a NUL byte")
    name = source if shown is None else shown
    if not policy.allowed_roots:
        raise PathNotAllowedError(
            f"refused path {name!r}: reading local files is disabled (no allowed roots)"
        )
    real = os.path.realpath(os.path.abspath(source))
    root = next((r for r in map(os.path.realpath, policy.allowed_roots) if _within(real, r)), None)
    if root is None:
        raise PathNotAllowedError(f"refused path {name!r}: it resolves outside the allowed roots")
    if any(_within(real, pseudo) for pseudo in _PSEUDO_FILESYSTEMS):
        raise PathNotAllowedError(f"refused path {name!r}: it is on a kernel pseudo-filesystem")
    fd = _open_beneath(root, real, name)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, pipe or socket"
            raise PathNotAllowedError(f"refused path {name!r}: it is {kind}, not a regular file")
        cap = _Cap(policy, f"file {name!r}")
        seen.sniff(os.pread(fd, SNIFF_BYTES, 0))
        if not cap.decided and info.st_size > policy.max_bytes:
            cap.decide(os.pread(fd, SNIFF_BYTES, 0))
        if info.st_size > cap.limit:
            raise TooLargeError(f"file {name!r} has {info.st_size} bytes, more than the {cap.describe()}")
        chunks: list[bytes] = []
        total = 0
        while data := os.read(fd, min(_CHUNK, cap.limit + 1 - total)):
            total += len(data)
            chunks.append(data)
            if not cap.decided and total >= SNIFF_BYTES:
                cap.decide(b"".join(chunks)[:SNIFF_BYTES])
            if total > cap.limit:
                raise TooLargeError(f"file {name!r} is larger than the {cap.describe()}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _open_beneath(root: str, real: str, source: str) -> int:
    """Open ``real`` walking down from ``root`` one component at a time, following no symlink."""
    relative = os.path.relpath(real, root)
    parts = [] if relative == os.curdir else relative.split(os.sep)
    base = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    except OSError as exc:
        raise _path_error(source, exc) from None
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        flags = base | (os.O_NONBLOCK | os.O_NOCTTY if last else os.O_DIRECTORY)
        try:
            child = os.open(part, flags, dir_fd=fd)
        except OSError as exc:
            swapped = exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(part, fd)
            os.close(fd)
            if swapped:
                raise PathNotAllowedError(
                    f"refused path {source!r}: a symlink appeared while opening it"
                ) from None
            raise _path_error(source, exc) from None
        os.close(fd)
        fd = child
    return fd


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


# open(2) errors that no retry can heal, beside ENOENT/EACCES: a socket (ENXIO), a device without a
# driver (ENODEV), something that cannot be opened for reading (EOPNOTSUPP, EISDIR), a symlink (ELOOP).
_NOT_A_FILE = {errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP, errno.EISDIR, errno.ELOOP}


def _path_error(source: str, exc: OSError) -> DfscanError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return SourceNotFoundError(f"path {source!r} does not exist")
    if exc.errno == errno.ENAMETOOLONG:
        return SourceNotFoundError(f"path {source!r} does not exist: a name in it is too long for any file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PathNotAllowedError(f"refused path {source!r}: permission denied")
    if exc.errno in _NOT_A_FILE:
        reason = (
            "a symlink" if exc.errno == errno.ELOOP else "a socket, device or other file that is not regular"
        )
        return PathNotAllowedError(f"refused path {source!r}: it is {reason}")
    return FetchError(f"could not open path {source!r}: {(exc.strerror or type(exc).__name__).lower()}")
