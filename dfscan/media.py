"""What kind of media some bytes are, from their first bytes only (never a name): no decoder imported.

Used by the worker's ``sources`` to pick the byte cap of a body while it streams in (a video may be larger than an
image) and to say what a read that failed was (:func:`media_kind`), and by ``video`` to force the demuxer
it opens, and by the HTTP API to refuse an upload that is neither before anything is queued. 16 bytes
are enough to decide.
"""

from __future__ import annotations

import re

SNIFF_BYTES = 16

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
# ftyp major brands that are still images (AVIF, HEIF/HEIC), not videos: left to the image decoder.
_IMAGE_BRANDS = frozenset(
    {
        b"avif",
        b"avis",
        b"heic",
        b"heix",
        b"heim",
        b"heis",
        b"hevc",
        b"hevx",
        b"hevm",
        b"hevs",
        b"mif1",
        b"msf1",
    }
)
# First boxes of QuickTime files written without an ftyp.
_QUICKTIME_BOXES = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip"})


def video_container(head: bytes) -> str | None:
    """``"mp4"`` (ISO-BMFF/QuickTime with a non-image brand), ``"matroska"`` (EBML: MKV, WebM) or None."""
    if head[:4] == _EBML_MAGIC:
        return "matroska"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return None if head[8:12] in _IMAGE_BRANDS else "mp4"
    if len(head) >= 8 and head[4:8] in _QUICKTIME_BOXES and int.from_bytes(head[:4], "big") >= 8:
        return "mp4"
    return None


# How the image formats dfscan decodes start (worker.inference.images.decode decides what they are; this only
# names what a failed read was): JPEG, PNG, GIF, TIFF and BigTIFF, BMP, WebP, AVIF and HEIF brands.
_IMAGE_MAGIC = re.compile(
    rb"\xff\xd8\xff|\x89PNG\r\n\x1a\n|GIF8[79]a|II\*\x00|MM\x00\*|II\+\x00|MM\x00\+|BM|RIFF....WEBP"
    rb"|....ftyp(?:avi[fs]|hei[cxms]|hev[cxms]|mif1|msf1)",
    re.DOTALL,
)


def media_kind(head: bytes) -> str | None:
    """``"video"`` or ``"image"`` when the first bytes start like one (a video first), else None."""
    if video_container(head) is not None:
        return "video"
    return "image" if _IMAGE_MAGIC.match(head) else None
