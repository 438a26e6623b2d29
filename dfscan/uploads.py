"""Uploaded bytes, stored by their SHA-256 (content-addressed) until the retention sweep deletes them.

The HTTP API writes an upload once per distinct content (the ``uploads`` table says which tenants hold it,
until when: ``db.uploads``) and queues its job with the source
``upload:sha256:<64 hex digits>``. A worker reads it through the same store, by digest only: the store's
directory is never one of DFSCAN_ALLOWED_ROOTS, and no client can name a path in it. An upload source
is accepted only from inside the trust boundary (the API writes it; HTTP clients may send only http(s)
URLs or files).

:class:`UploadStore` is the small interface an S3-compatible store can implement; :class:`DirectoryStore`
is the default (a local directory, a shared volume in compose and Kubernetes). Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from dfscan.exceptions import SourceNotFoundError, TooLargeError, UnsupportedSourceError

UPLOAD_SCHEME = "upload:sha256:"
_DIGEST = re.compile(r"[0-9a-f]{64}")


def upload_source(digest: str) -> str:
    """The job source naming an upload."""
    return UPLOAD_SCHEME + digest


def is_upload_source(source: str) -> bool:
    return source[: len(UPLOAD_SCHEME)].lower() == UPLOAD_SCHEME


def digest_of(source: str) -> str:
    """The SHA-256 an upload source names; UNSUPPORTED_SOURCE when it is not 64 lower-case hex digits."""
    digest = source[len(UPLOAD_SCHEME) :]
    if not _DIGEST.fullmatch(digest):
        raise UnsupportedSourceError("refused an upload source that does not name a SHA-256 digest")
    return digest


class UploadStore(Protocol):
    """Where uploads live. ``put`` is idempotent (same bytes, same digest, one copy)."""

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store the bytes; returns (sha256 hex digest, size). Storing again refreshes its age."""
        ...

    def read(self, digest: str, max_bytes: int) -> bytes:
        """The bytes of ``digest``; FILE_NOT_FOUND when deleted (retention) or never stored, TOO_LARGE
        past ``max_bytes``."""
        ...

    def stale(self, older_than_seconds: float) -> list[str]:
        """Digests last stored more than ``older_than_seconds`` ago (and clears the leftovers of writes
        interrupted that long ago): the candidates of the retention sweep."""
        ...

    def delete(self, digest: str, older_than_seconds: float) -> bool:
        """Delete the bytes of ``digest`` if they are still older than ``older_than_seconds`` (uploaded
        again since the sweep looked: kept); whether they were deleted."""
        ...


class DirectoryStore:
    """Uploads as files ``<root>/<d[:2]>/<d>``, written to a temporary file and renamed into place (a
    reader never sees a partial upload; concurrent uploads of the same bytes leave one file)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise UnsupportedSourceError("refused an upload digest that is not 64 lower-case hex digits")
        return self.root / digest[:2] / digest

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        self.root.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    sha.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            digest = sha.hexdigest()
            final = self.path(digest)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)  # same bytes: replacing an existing copy changes nothing but its age
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest, size

    def read(self, digest: str, max_bytes: int) -> bytes:
        try:
            with open(self.path(digest), "rb") as handle:
                data = handle.read(max_bytes + 1)
        except FileNotFoundError:
            raise SourceNotFoundError(
                f"upload {digest[:12]}... is not stored (deleted after DFSCAN_UPLOAD_RETENTION_HOURS, or "
                "never uploaded)"
            ) from None
        if len(data) > max_bytes:
            raise TooLargeError(f"upload {digest[:12]}... is larger than {max_bytes} bytes")
        return data

    def digests(self) -> Iterator[tuple[str, float]]:
        """Every stored digest with the time it was last stored (mtime)."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for file in folder.iterdir():
                if _DIGEST.fullmatch(file.name):
                    try:
                        yield file.name, file.stat().st_mtime
                    except FileNotFoundError:
                        continue

    def stale(self, older_than_seconds: float) -> list[str]:
        cutoff = time.time() - older_than_seconds
        old = [digest for digest, mtime in self.digests() if mtime < cutoff]
        for stale in self.root.glob(".upload-*") if self.root.is_dir() else ():
            try:  # temporary files of uploads interrupted mid-write
                if stale.stat().st_mtime < cutoff:
                    stale.unlink(missing_ok=True)
            except FileNotFoundError:
                continue
        return old

    def delete(self, digest: str, older_than_seconds: float) -> bool:
        path = self.path(digest)
        try:
            if path.stat().st_mtime >= time.time() - older_than_seconds:
                return False
        except FileNotFoundError:
            return False
        path.unlink(missing_ok=True)
        return True


def new_store(location: str | os.PathLike[str]) -> UploadStore:
    """The store at DFSCAN_UPLOAD_STORE (a directory; other schemes may follow)."""
    return DirectoryStore(location)
