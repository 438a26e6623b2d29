"""What an image's container declares, read cheaply and with a cap before Pillow parses it.

Pillow's plugins walk containers in Python: JPEG markers byte by byte, PNG chunks one by one, every GIF
sub-block and every TIFF page (quadratically) to count frames, every TIFF tag's value. On hostile input
those walks are where the time and memory go (a 10 MB TIFF of 100,000 pages took 43 s of CPU to count).
This module walks the same structures with tight loops that stop at a cap, so the cost of an image is
known before anything expensive runs. Each check raises:

- ``ImageTooLargeError`` (``TOO_LARGE``) for declared sizes over the policy: frames or pages over
  ``max_frames``, a TIFF tile over ``max_pixels``;
- ``ImageTooComplexError`` (``IMAGE_TOO_COMPLEX``) for structure no real photo has and whose parsing cost
  grows with it: more JPEG scans or marker segments, PNG chunks, GIF sub-blocks, TIFF tags or strips than
  the caps below, junk between JPEG markers, metadata (EXIF) that references more bytes than the file has;
- ``UnsupportedFormatError`` for RLE-compressed BMP, whose only decoder in Pillow is pure Python
  (a 1 KB file took 6 s).

What the walks cannot see (a hostile stream inside a valid structure) is left to the decode deadline and
memory limit of :mod:`worker.inference.images.decode_pool`. Truncated or malformed structure is not judged here:
the walk stops and Pillow reports it as ``CORRUPT_IMAGE``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from dfscan.exceptions import ImageTooComplexError, ImageTooLargeError, UnsupportedFormatError

# Caps on structure. Each is one to two orders of magnitude above what encoders write, and low enough
# that the walk (here) and Pillow's own walk stay in milliseconds.
MAX_JPEG_SCANS = 64  # libjpeg/mozjpeg progressive files have 6-20 scans; each costs a pass over the image
MAX_JPEG_SEGMENTS = 1000  # marker segments before the first scan (APPn, COM, DQT, DHT, ...)
MAX_JPEG_JUNK = 64 * 1024  # bytes of fill (0xFF) or junk between markers; Pillow skips them one by one
MAX_PNG_CHUNKS = 20_000  # libpng writes 8 KiB IDAT chunks: 2,560 for a 20 MB file
MAX_GIF_BLOCKS = 200_000  # 255-byte sub-blocks: 80,000 for a 20 MB file
MAX_TIFF_TAGS = 4096  # tags in one IFD; real files have 10-60
MAX_TIFF_BLOCKS = 100_000  # strips or tiles of the first page; Pillow makes a Python tuple for each
MAX_EXIF_BYTES = 1024 * 1024  # an EXIF block (camera EXIF fits a 64 KiB JPEG segment)
# Items of a HEIF/AVIF file (images, grid tiles, thumbnails, EXIF): libheif refuses more than 1000 as a
# "security limit" that pillow-heif reports like any parse error. An iPhone photo has about 50 (48 tiles).
MAX_HEIF_ITEMS = 1000

_FILL = re.compile(rb"\xff+")


@dataclass(frozen=True)
class Declared:
    """What the walk learnt: the frame (page) count where it counted them (None: ask Pillow, whose count is
    cheap for that format), and the largest block of pixels a decoder works on at once (a TIFF tile may be
    larger than the image; 0 when the image size is what counts)."""

    frames: int | None = None
    work_pixels: int = 0


def inspect(data: bytes, fmt: str, *, max_pixels: int, max_frames: int) -> Declared:
    """Check ``data``, which starts like Pillow format ``fmt``, against the caps; return what it declares."""
    if fmt == "JPEG":
        _check_jpeg(data)
        return Declared()
    if fmt == "PNG":
        return _check_png(data, max_frames)
    if fmt == "GIF":
        return Declared(frames=_count_gif_frames(data, max_frames))
    if fmt == "TIFF":
        return _check_tiff(data, max_pixels=max_pixels, max_frames=max_frames)
    if fmt == "BMP":
        _check_bmp(data)
        return Declared()
    if fmt == "WEBP":
        _check_webp(data)
    if fmt in ("HEIF", "AVIF"):
        _check_heif_items(data)
    return Declared()


def check_exif(blob: bytes | None) -> None:
    """An EXIF block (TIFF structure, optionally after ``Exif\\0\\0``) that Pillow may parse: bounded size,
    bounded tag count, and tag values that together reference no more bytes than the block holds."""
    if not blob:
        return
    if len(blob) > MAX_EXIF_BYTES:
        raise ImageTooComplexError(f"EXIF block of {len(blob)} bytes, over the cap of {MAX_EXIF_BYTES}")
    if blob.startswith(b"Exif\x00\x00"):
        blob = blob[6:]
    header = _tiff_header(blob)
    if header is not None:
        endian, big, first = header
        _check_ifd_values(blob, first, endian, big)


def _too_many(what: str, count: int, cap: int) -> ImageTooComplexError:
    return ImageTooComplexError(f"{what}: more than {cap} (read {count} before stopping)")


# --- JPEG ---------------------------------------------------------------------------------------


def _check_jpeg(data: bytes) -> None:
    """Marker segments up to the first scan, junk between them, and the number of scans.

    Scans are counted as ``FF DA`` pairs after the first scan header: entropy-coded data never holds one
    (a 0xFF there is followed by 0x00 or a restart marker), so the count is exact or, when a table between
    scans happens to contain those two bytes, an over-estimate: never under."""
    n = len(data)
    pos, segments, junk = 2, 0, 0
    while pos < n:
        if data[pos] != 0xFF:
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                return
            junk += nxt - pos
            pos = nxt
        fill = _FILL.match(data, pos)
        assert fill is not None
        junk += fill.end() - pos - 1
        pos = fill.end()
        if junk > MAX_JPEG_JUNK:
            raise ImageTooComplexError(f"JPEG: more than {MAX_JPEG_JUNK} bytes of junk between markers")
        if pos >= n:
            return
        marker = data[pos]
        pos += 1
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _too_many("JPEG marker segments before the first scan", segments, MAX_JPEG_SEGMENTS)
        if marker == 0xD9:  # EOI before any scan: Pillow reports it
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers
            continue
        if pos + 2 > n:
            return
        length = struct.unpack_from(">H", data, pos)[0]
        if marker == 0xDA:
            scans = 1 + data.count(b"\xff\xda", pos + length)
            if scans > MAX_JPEG_SCANS:
                raise _too_many("JPEG scans", scans, MAX_JPEG_SCANS)
            return
        if marker == 0xE1 and data.startswith(b"Exif\x00\x00", pos + 2):
            check_exif(data[pos + 2 : pos + length])
        pos += length


# --- PNG ----------------------------------------------------------------------------------------


def _check_png(data: bytes, max_frames: int) -> Declared:
    """Count chunks (Pillow reads each one in Python, before and after the pixel data), read the APNG
    frame count from ``acTL`` and check an ``eXIf`` block."""
    n = len(data)
    pos, chunks, frames = 8, 0, None
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _too_many("PNG chunks", chunks, MAX_PNG_CHUNKS)
        body = pos + 8
        if kind == b"acTL" and length >= 8 and body + 8 <= n:
            frames = struct.unpack_from(">I", data, body)[0]
            if frames > max_frames:
                raise ImageTooLargeError(
                    f"image has {frames} frames, over the cap of {max_frames}", limit="image_frames"
                )
        elif kind == b"eXIf":
            check_exif(data[body : body + length])
        elif kind == b"IEND":
            break
        pos = body + length + 4
    return Declared(frames=frames)


# --- GIF ----------------------------------------------------------------------------------------


def _count_gif_frames(data: bytes, max_frames: int) -> int | None:
    """Frames up to ``max_frames + 1`` (TOO_LARGE beyond), skipping data sub-blocks with a cap on
    their number. None when the structure ends early: Pillow then decides (first frame or CORRUPT_IMAGE)."""
    n = len(data)
    if n < 13:
        return None
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, blocks = 0, 0
    while pos < n:
        introducer = data[pos]
        if introducer == 0x3B:  # trailer
            return frames
        if introducer == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif introducer == 0x2C:  # image descriptor (9 bytes), local colour table, LZW code size
            frames += 1
            if frames > max_frames:
                raise ImageTooLargeError(
                    f"image has more than {max_frames} frames, over the cap of {max_frames}",
                    limit="image_frames",
                )
            if pos + 10 > n:
                return frames
            local = data[pos + 9]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
        else:
            return frames or None
        while pos < n:  # data sub-blocks until the zero-length terminator
            size = data[pos]
            pos += size + 1
            if size == 0:
                break
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise _too_many("GIF data sub-blocks", blocks, MAX_GIF_BLOCKS)
    return frames or None


# --- TIFF ---------------------------------------------------------------------------------------

_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_IMAGE_WIDTH, _IMAGE_LENGTH, _ROWS_PER_STRIP = 256, 257, 278
_STRIP_OFFSETS, _TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS = 273, 322, 323, 324


def _tiff_header(data: bytes) -> tuple[str, bool, int] | None:
    """(struct endianness, BigTIFF?, offset of the first IFD), or None if this is not a TIFF header."""
    if data[:2] == b"II":
        endian = "<"
    elif data[:2] == b"MM":
        endian = ">"
    else:
        return None
    if len(data) < 16:
        return None
    version = struct.unpack_from(endian + "H", data, 2)[0]
    if version == 42:
        return endian, False, struct.unpack_from(endian + "I", data, 4)[0]
    if version == 43:
        return endian, True, struct.unpack_from(endian + "Q", data, 8)[0]
    return None


def _ifd_entries(data: bytes, offset: int, endian: str, big: bool) -> tuple[int, int] | None:
    """(entry count, offset of the first entry) of the IFD at ``offset``, or None if it is out of range."""
    width = 8 if big else 2
    if offset <= 0 or offset + width > len(data):
        return None
    count = struct.unpack_from(endian + ("Q" if big else "H"), data, offset)[0]
    if count > MAX_TIFF_TAGS:
        raise _too_many("TIFF tags in one directory", count, MAX_TIFF_TAGS)
    return count, offset + width


def _check_ifd_values(data: bytes, offset: int, endian: str, big: bool) -> dict[int, tuple[int, int]]:
    """Walk one IFD's entries: the bytes their values reference (outside the entry) may add up to at most
    the file's size, since Pillow copies each; returns ``{tag: (count, first value)}`` for every tag."""
    found = _ifd_entries(data, offset, endian, big)
    if found is None:
        return {}
    count, pos = found
    entry, inline = (20, 8) if big else (12, 4)
    layout = endian + ("HHQ" if big else "HHI")
    referenced = 0
    tags: dict[int, tuple[int, int]] = {}
    for _ in range(count):
        if pos + entry > len(data):
            break
        tag, kind, n = struct.unpack_from(layout, data, pos)
        size = n * _TYPE_SIZES.get(kind, 1)
        value = 0
        if size > inline:
            referenced += min(size, len(data))
        elif kind == 3:
            value = struct.unpack_from(endian + "H", data, pos + entry - inline)[0]
        elif kind in (4, 13):
            value = struct.unpack_from(endian + "I", data, pos + entry - inline)[0]
        elif kind == 16:
            value = struct.unpack_from(endian + "Q", data, pos + entry - inline)[0]
        tags[tag] = (n, value)
        pos += entry
    if referenced > 2 * len(data) + 65536:
        raise ImageTooComplexError(
            f"TIFF/EXIF tags reference {referenced} bytes of values in a {len(data)}-byte file"
        )
    return tags


def _check_tiff(data: bytes, *, max_pixels: int, max_frames: int) -> Declared:
    """The first page's tags (values, strips, tiles) and the page count, walked IFD by IFD without reading
    tags, up to ``max_frames + 1``."""
    header = _tiff_header(data)
    if header is None:
        return Declared()
    endian, big, first = header
    tags = _check_ifd_values(data, first, endian, big)
    blocks = max(tags.get(_STRIP_OFFSETS, (0, 0))[0], tags.get(_TILE_OFFSETS, (0, 0))[0])
    if blocks > MAX_TIFF_BLOCKS:
        raise _too_many("TIFF strips or tiles in the first page", blocks, MAX_TIFF_BLOCKS)
    work = 0
    if _TILE_WIDTH in tags or _TILE_LENGTH in tags:
        tile_w, tile_h = tags.get(_TILE_WIDTH, (0, 0))[1], tags.get(_TILE_LENGTH, (0, 0))[1]
        work = tile_w * tile_h
        if work > max_pixels:
            raise ImageTooLargeError(
                f"TIFF tile is {tile_w}x{tile_h} = {work} pixels, over the cap of {max_pixels}"
            )
    pages, offset, seen = 0, first, set()
    entry, pointer = (20, 8) if big else (12, 4)
    while offset and offset not in seen:
        found = _ifd_entries(data, offset, endian, big)
        if found is None:
            break
        seen.add(offset)
        pages += 1
        if pages > max_frames:
            raise ImageTooLargeError(
                f"image has more than {max_frames} pages, over the cap of {max_frames}", limit="image_frames"
            )
        count, pos = found
        nxt = pos + count * entry
        if nxt + pointer > len(data):
            break
        offset = struct.unpack_from(endian + ("Q" if big else "I"), data, nxt)[0]
    return Declared(frames=pages or None, work_pixels=work)


# --- HEIF and AVIF ------------------------------------------------------------------------------


def _boxes(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    """The first box of each type among the ISO-BMFF boxes in ``data[start:end]``: type -> (payload start,
    payload end). Stops at a box that runs past ``end`` (truncation is the decoder's to report)."""
    found: dict[bytes, tuple[int, int]] = {}
    pos = start
    for _ in range(4096):
        if pos + 8 > end:
            break
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1 and pos + 16 <= end:
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            break
        found.setdefault(kind, (pos + head, pos + size))
        pos += size
    return found


def _check_heif_items(data: bytes) -> None:
    """The number of items a HEIF/AVIF file declares (``meta`` > ``iloc`` and ``iinf``) against
    :data:`MAX_HEIF_ITEMS`: over it is TOO_LARGE, as too many frames are, where libheif would
    refuse the file with an error that reads like corruption."""
    meta = _boxes(data, 0, len(data)).get(b"meta")
    if meta is None:
        return
    children = _boxes(data, meta[0] + 4, meta[1])  # meta is a full box: version and flags first
    count = 0
    iloc = children.get(b"iloc")
    if iloc is not None and iloc[0] + 8 <= iloc[1]:
        version = data[iloc[0]]
        at = iloc[0] + 6  # version/flags, then the four field sizes (2 bytes)
        count = struct.unpack_from(">H" if version < 2 else ">I", data, at)[0]
    iinf = children.get(b"iinf")
    if iinf is not None and iinf[0] + 8 <= iinf[1]:
        version = data[iinf[0]]
        count = max(count, struct.unpack_from(">H" if version == 0 else ">I", data, iinf[0] + 4)[0])
    if count > MAX_HEIF_ITEMS:
        raise ImageTooLargeError(
            f"HEIF/AVIF file holds {count} items (images, tiles, metadata), over the cap of {MAX_HEIF_ITEMS}",
            limit="image_frames",
        )


# --- BMP and WebP -------------------------------------------------------------------------------


def _check_bmp(data: bytes) -> None:
    """RLE4/RLE8 BMP would be decoded by Pillow's pure-Python decoder: refused."""
    if len(data) >= 34 and struct.unpack_from("<I", data, 14)[0] >= 40:
        compression = struct.unpack_from("<I", data, 30)[0]
        if compression in (1, 2):
            kind = "RLE8" if compression == 1 else "RLE4"
            raise UnsupportedFormatError(
                f"{kind}-compressed BMP is not decoded (Pillow's decoder for it is pure Python)"
            )


def _check_webp(data: bytes) -> None:
    """Top-level RIFF chunks: an EXIF chunk is checked like any EXIF block. Frames are counted by libwebp's
    demuxer (C, cheap) through Pillow."""
    pos, n = 12, len(data)
    for _ in range(64):
        if pos + 8 > n:
            return
        kind, length = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if kind == b"EXIF":
            check_exif(data[pos + 8 : pos + 8 + length])
        if kind == b"ANMF":
            return  # frames follow; nothing after them is read before decoding
        pos += 8 + length + (length & 1)
