"""Untrusted bytes to an RGB Pillow image, safely: allow-listed formats, pixel and frame caps, full decode.

Every image dfscan scans comes from strangers, so decoding is where an attacker gets to run a parser.
The rules, in the order they are applied:

1. **Format allow-list on the header.** ``Image.open(formats=...)`` only tries the allowed plugins, so
   bytes that look like EPS, PDF or PSD never reach their parsers. Bytes that no allowed plugin accepts
   are ``UNSUPPORTED_FORMAT``, unless they start with the magic number of an allowed format (a PNG
   signature with a broken header): those are ``CORRUPT_IMAGE``. Empty data is ``CORRUPT_IMAGE``: it is
   a broken download far more often than a deliberate choice of format.
2. **Pixel cap before decoding.** ``width * height`` from the header is compared with
   ``ImagePolicy.max_pixels``; Pillow's own ``DecompressionBombError`` (raised by ``Image.open`` above
   twice ``Image.MAX_IMAGE_PIXELS``) becomes ``IMAGE_TOO_LARGE`` too. Pillow's global limits are left
   as they are: our cap is checked here, per call, so other code in the process is unaffected. Pillow's
   ``DecompressionBombWarning`` is not turned into an error (that would need ``warnings.catch_warnings``,
   which is not thread-safe); with the default policy (40 Mpx) our own check rejects those images first.
3. **Frame cap** (``n_frames``) for animations and multi-page files; only the first frame is decoded.
4. **Draft** (JPEG only): with ``draft_size`` the JPEG decoder scales by 1/2, 1/4 or 1/8 in the DCT, never
   below ``draft_size``, which makes decoding a large photo several times cheaper.
5. **Full load** (``img.load()``) so that truncated data raises here (``ImageFile.LOAD_TRUNCATED_IMAGES``
   stays False), then EXIF orientation (``ImageOps.exif_transpose``), then conversion to RGB.

Conversion to RGB (:func:`to_rgb`), chosen to match what ``transformers`` does where it is right:

- transparency (RGBA, LA, PA, P or L/RGB with a ``transparency`` key) is composited on **white**, as
  ``transformers.image_transforms.convert_to_rgb`` does, so training and serving see the same pixels;
- 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``) is **scaled** to 8 bit (``v * 255 / 65535``, rounded),
  where ``Image.convert`` would clip everything above 255 to white; ``I`` (32-bit) is read as 16-bit
  data (clipped to 0..65535, then scaled), which is what 16-bit PNG and TIFF files give;
- ``F`` (float) is scaled by 255 when all values are in [0, 1], otherwise its min..max is stretched to 0..255;
- CMYK, YCbCr, LAB, HSV, 1-bit and L go through Pillow's ``convert("RGB")``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from dfscan.exceptions import CorruptImageError, DfscanError, ImageTooLargeError, UnsupportedFormatError

logger = logging.getLogger(__name__)

# Pillow format names dfscan decodes: the formats photos and generated images are shared in on the web.
# Left out on purpose: EPS and PDF (EPS decoding runs Ghostscript), PSD, ICO/ICNS, TGA, PCX, SGI, XBM,
# FITS, DDS, JPEG 2000 and the long tail of rarely used, rarely fuzzed plugins: each one is parser attack
# surface and none is a format deepfakes are shared in. MPO (multi-picture JPEG from phones) needs no entry:
# the JPEG plugin opens those files itself.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"})

# How each allowed format starts; bytes with one of these prefixes that the plugin rejects are corrupt,
# not unsupported.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*"),
    "BMP": (b"BM",),
}

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImagePolicy:
    """What an image may be. Defaults: 40 Mpx covers any camera photo (a 45 Mpx full-frame sensor is the
    exception and is worth refusing: RGB at 40 Mpx is already 120 MB in memory); 1000 frames is far more
    than any animation whose first frame is worth scanning, and counting frames stays cheap."""

    max_pixels: int = 40_000_000
    max_frames: int = 1000
    formats: frozenset[str] = ALLOWED_FORMATS


def image_sha256(data: bytes) -> str:
    """The hex SHA-256 of the raw bytes: the identity of an image for de-duplication and audit."""
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes, policy: ImagePolicy, *, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode ``data`` into an RGB image (first frame, EXIF orientation applied).

    ``draft_size`` is (width, height) as displayed; a JPEG may then decode at a reduced scale that is
    still at least that large. Raises UnsupportedFormatError, CorruptImageError or ImageTooLargeError.
    """
    return decode_with_size(data, policy, draft_size=draft_size)[0]


def decode_with_size(
    data: bytes, policy: ImagePolicy, *, draft_size: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Like :func:`decode_image`, and also the original (width, height) as displayed, before any draft."""
    if not data:
        raise CorruptImageError("empty image data (0 bytes)")
    try:
        img = _open(data, policy)
        with img:
            width, height = img.size
            _check_caps(img, policy)
            orientation = _orientation(img)
            if orientation in _SWAPPING_ORIENTATIONS:
                width, height = height, width
            if draft_size is not None and img.format in ("JPEG", "MPO"):
                _draft(img, draft_size, swap=orientation in _SWAPPING_ORIENTATIONS)
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except DfscanError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLargeError("image too large: out of memory while decoding") from exc
    except Exception as exc:  # Pillow plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        raise CorruptImageError(f"corrupt image data: {type(exc).__name__}: {exc}") from exc
    return rgb, (width, height)


def _open(data: bytes, policy: ImagePolicy) -> Image.Image:
    formats = sorted(policy.formats)
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        raise
    except Image.UnidentifiedImageError as exc:
        claimed = _claimed_format(data, policy.formats)
        if claimed is not None:
            raise CorruptImageError(f"data starts like {claimed} but cannot be parsed") from exc
        raise UnsupportedFormatError(
            f"not an image in an allowed format ({', '.join(formats)}); starts with {data[:8]!r}"
        ) from exc


def sniff_format(data: bytes, policy: ImagePolicy) -> str | None:
    """The allowed format ``data`` starts like (by its magic number), e.g. ``"JPEG"``; None if none."""
    return _claimed_format(data, policy.formats)


def _claimed_format(data: bytes, formats: frozenset[str]) -> str | None:
    if "WEBP" in formats and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for fmt, prefixes in _MAGIC.items():
        if fmt in formats and data.startswith(prefixes):
            return fmt
    return None


def _check_caps(img: Image.Image, policy: ImagePolicy) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"image declares an empty size {width}x{height}")
    if width * height > policy.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the cap of {policy.max_pixels}"
        )
    frames = int(getattr(img, "n_frames", 1))
    if frames > policy.max_frames:
        raise ImageTooLargeError(f"image has {frames} frames, over the cap of {policy.max_frames}")
    if frames > 1:
        img.seek(0)


def _orientation(img: Image.Image) -> int:
    value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    return value if isinstance(value, int) else 1


def _draft(img: Image.Image, draft_size: tuple[int, int], *, swap: bool) -> None:
    width, height = draft_size
    if width <= 0 or height <= 0:
        raise ValueError(f"draft_size must be positive, got {draft_size}")
    # draft_size is as displayed; the JPEG is stored before rotation.
    target = (height, width) if swap else (width, height)
    before = img.size
    img.draft("RGB", target)
    if img.size != before:
        logger.debug("JPEG drafted from %s to %s for target %s", before, img.size, target)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; see the module docstring for the choices."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if mode == "F":
        farr = np.asarray(img, dtype=np.float64)
        finite = farr[np.isfinite(farr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        scaled = (np.nan_to_num(farr, nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / max(hi - lo, 1e-12))
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8)).convert("RGB")
    has_alpha = "A" in img.getbands() or "a" in img.getbands() or img.info.get("transparency") is not None
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
