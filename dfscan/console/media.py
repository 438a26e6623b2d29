"""Where the console reads a verdict's media: the bytes the API's upload store still holds, by sha256.

A verdict keeps the sha256 of the bytes it judged, never the bytes; uploads are stored content-addressed
(``DFSCAN_UPLOAD_STORE``) until ``DFSCAN_UPLOAD_RETENTION_HOURS`` pass. So the console can show, and
``dfscan reviews export`` can write, exactly the uploads still within retention, and never fetches a
source URL again from the reviewer's browser or from the server (a URL's content may have changed, and a
fetch on page view would be an SSRF and tracking channel). Media of URL sources and of expired uploads
show as "no longer held", and a tenant sees only bytes its own upload rows hold (:class:`TenantMedia`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

_SHA256 = re.compile(r"[0-9a-f]{64}")

# Content types of the formats the worker sniffs (verdicts.image_format); anything else is not served.
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "AVIF": "image/avif",
    "HEIF": "image/heif",
    "MP4": "video/mp4",
    "MOV": "video/quicktime",
    "WEBM": "video/webm",
    "MKV": "video/x-matroska",
}


class HeldMedia(Protocol):
    def holds(self, sha256: str) -> bool:
        """Whether the bytes with this sha256 are still held."""
        ...

    def read(self, sha256: str) -> bytes | None:
        """The bytes with this sha256 if they are still held, else None."""
        ...


class DirectoryMedia:
    """A content-addressed directory: ``ROOT/<first two hex digits>/<sha256>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def holds(self, sha256: str) -> bool:
        try:
            return self.path_of(sha256).is_file()
        except ValueError:
            return False

    def read(self, sha256: str) -> bytes | None:
        try:
            return self.path_of(sha256).read_bytes()
        except (FileNotFoundError, ValueError):
            return None


class TenantMedia:
    """A store seen by one tenant: only the bytes its own ``uploads`` rows hold (``db.uploads.held_by``),
    never bytes that only another tenant uploaded, even with the same sha256."""

    def __init__(self, store: HeldMedia, held: set[str]) -> None:
        self.store = store
        self.held = held

    def holds(self, sha256: str) -> bool:
        return sha256 in self.held and self.store.holds(sha256)

    def read(self, sha256: str) -> bytes | None:
        return self.store.read(sha256) if sha256 in self.held else None


def content_type(fmt: str | None) -> str | None:
    return CONTENT_TYPES.get((fmt or "").upper())
