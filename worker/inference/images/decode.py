"""Untrusted bytes to an RGB Pillow image, safely: allow-listed formats, costs bounded before they are paid.

Every image dfscan scans comes from strangers, so decoding is where an attacker gets to run a parser.
The rules, in the order they are applied:

1. **Format allow-list on the header.** ``Image.open(formats=...)`` only tries the allowed plugins, so
   bytes that look like EPS, PDF or PSD never reach their parsers. Bytes that no allowed plugin accepts
   are ``UNSUPPORTED_FORMAT``, unless they start with the magic number of an allowed format (a PNG
   signature with a broken header): those are ``CORRUPT_IMAGE``. Empty data is ``CORRUPT_IMAGE``: it is
   a broken download far more often than a deliberate choice of format. HEIC/HEIF (pillow-heif, whose
   opener is registered on first use) and AVIF (Pillow's own plugin) are allowed: phones upload them.
2. **Container walk before Pillow parses** (:mod:`worker.inference.images.headers`): JPEG scans and marker
   segments, PNG chunks, GIF frames and sub-blocks, TIFF pages, tags and tile sizes, EXIF blocks are read
   with loops that stop at a cap (``TOO_LARGE`` / ``IMAGE_TOO_COMPLEX``); RLE BMP is refused.
3. **Pixel cap before decoding.** ``width * height`` from the header is compared with
   ``ImagePolicy.max_pixels``; Pillow's own ``DecompressionBombError`` (raised by ``Image.open`` above
   twice ``Image.MAX_IMAGE_PIXELS``) becomes ``TOO_LARGE`` too. Pillow's global limits are left
   as they are: our cap is checked here, per call, so other code in the process is unaffected.
4. **Frame cap** for animations and multi-page files, counted by the walk for GIF and TIFF (Pillow's own
   count walks every frame) and by Pillow where its count is cheap; only the first frame is decoded.
5. **Draft** (JPEG only): with ``draft_size`` the JPEG decoder scales by 1/2, 1/4 or 1/8 in the DCT, never
   below ``draft_size``, which makes decoding a large photo several times cheaper.
6. **Memory admission.** The bytes a decode will hold (decoded pixels in their own mode, a TIFF tile, the
   RGB result) are estimated from the header and reserved from a per-process budget
   (``ImagePolicy.decode_memory``) before decoding; a decode that would not fit even alone is
   ``TOO_LARGE``, others wait for room. 16 threads decoding 40 Mpx images then cannot add up.
7. **Full load** (``img.load()``) so that truncated data raises here (``ImageFile.LOAD_TRUNCATED_IMAGES``
   stays False), then conversion to RGB **in strips of rows**, each reduced at once by an integer factor
   when ``draft_size`` allows (at least twice the target remains, Pillow's ``reducing_gap=2``): a 40 Mpx
   float TIFF or RGBA PNG never exists as a second full-size copy. EXIF orientation is applied last, to
   the small RGB result.

With ``ImagePolicy.decode_processes`` > 0 all of this runs in a pool of child processes with an address
space limit and a wall deadline (:mod:`worker.inference.images.decode_pool`): the backstop for whatever the checks
above miss.

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

import contextlib
import hashlib
import io
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dfscan.exceptions import CorruptImageError, DfscanError, ImageTooLargeError, UnsupportedFormatError
from worker.inference import lanes
from worker.inference.images import headers

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
ROW_POINTER_BYTES = 8  # Pillow's image->image[y]: one pointer per row of every image it holds

# Pillow format names dfscan decodes: the formats photos and generated images are shared in on the web,
# and the two phones save in (HEIF from iPhones, AVIF from recent Android).
# Left out on purpose: EPS and PDF (EPS decoding runs Ghostscript), PSD, ICO/ICNS, TGA, PCX, SGI, XBM,
# FITS, DDS, JPEG 2000 and the long tail of rarely used, rarely fuzzed plugins: each one is parser attack
# surface and none is a format deepfakes are shared in. MPO (multi-picture JPEG from phones) needs no entry:
# the JPEG plugin opens those files itself.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF", "HEIF"})

# How each allowed format starts; bytes with one of these prefixes that the plugin rejects are corrupt,
# not unsupported. WebP, AVIF and HEIF are recognised by their container (RIFF, ISO BMFF ftyp brand).
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "BMP": (b"BM",),
}
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})

# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION_TAG = 0x0112

# Bytes per pixel of Pillow's storage by mode (RGB is stored in 4 bytes); others count 4.
_STORAGE = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Formats whose library decodes into its own buffer before Pillow copies it (libwebp, libavif, libheif).
_LIBRARY_COPY = frozenset({"WEBP", "AVIF", "HEIF"})
# Conversion to RGB works on strips of about this many pixels.
_STRIP_PIXELS = 1 << 20


@dataclass(frozen=True)
class ImagePolicy:
    """What an image may be and what decoding it may cost. Defaults: 40 Mpx covers any camera photo
    (a 45 Mpx full-frame sensor is the exception and is worth refusing: RGB at 40 Mpx is already 120 MB in
    memory); 1000 frames is far more than any animation whose first frame is worth scanning.
    ``decode_memory`` is the per-process budget for decodes in flight (and, with ``decode_processes`` > 0,
    each decode child's address-space allowance above its start-up size); ``decode_timeout`` is the wall
    deadline of one decode in a child (no deadline can stop a C decoder in the calling thread)."""

    max_pixels: int = 40_000_000
    max_frames: int = 1000
    formats: frozenset[str] = ALLOWED_FORMATS
    decode_memory: int = 512 * MiB
    decode_processes: int = 0
    decode_timeout: float = 4.0
    # Decode large JPEGs at 1/2, 1/4 or 1/8 scale (``draft``) before the model's resize. Off by default:
    # the result differs from a full decode (p(fake) by up to ~4e-3 on a ViT-B, measured on 4000x3000
    # photos), so scores would no longer equal what the checkpoint's own preprocessing (and the seed's
    # pipeline, and training) computes; a full decode costs ~15 ms more CPU per 12 Mpx photo.
    jpeg_draft: bool = False
    # Keep small JPEG previews of the judged pixels (worker/inference/images/previews.py).
    previews: bool = True


def image_sha256(data: bytes) -> str:
    """The hex SHA-256 of the raw bytes: the identity of an image for de-duplication and audit."""
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes, policy: ImagePolicy, *, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode ``data`` into an RGB image (first frame, EXIF orientation applied).

    ``draft_size`` is (width, height) as displayed: the result may then be smaller than the original
    (JPEG draft, integer reduction) but never below twice that size, or the JPEG draft's own minimum.
    Raises UnsupportedFormatError, CorruptImageError, ImageTooLargeError or ImageTooComplexError.
    """
    return decode_with_size(data, policy, draft_size=draft_size)[0]


def decode_with_size(
    data: bytes, policy: ImagePolicy, *, draft_size: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Like :func:`decode_image`, and also the original (width, height) as displayed, before any draft.

    This is the bounded decode to the EXIF-oriented RGB image that any model input (whole image, face
    crops) starts from; with ``policy.decode_processes`` it runs in the decode pool."""
    if policy.decode_processes > 0:
        from worker.inference.images.decode_pool import run_isolated

        return run_isolated(policy, decode_in_process, data, policy, draft_size)
    return decode_in_process(data, policy, draft_size)


def decode_in_process(
    data: bytes,
    policy: ImagePolicy,
    draft_size: tuple[int, int] | None = None,
    finish: Callable[[Image.Image], Image.Image] | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`decode_with_size` in the calling thread, whatever ``policy.decode_processes`` says.

    ``finish`` (e.g. the model's resize) runs on the RGB image while the decode still holds its share
    of the memory budget, and its result is returned instead: a full-size RGB image (160 MB for a
    40,000,000x1 PNG) then never lives outside the budget."""
    if not data:
        raise CorruptImageError("empty image data (0 bytes)")
    try:
        fmt = _claimed_format(data, policy.formats)
        declared = headers.Declared()
        if fmt is not None:
            declared = headers.inspect(data, fmt, max_pixels=policy.max_pixels, max_frames=policy.max_frames)
        img = _open(data, policy)
        with img:
            return _decode_opened(img, declared, policy, draft_size, finish)
    except DfscanError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"decompression bomb: {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLargeError("out of memory while decoding", limit="decode_memory") from exc
    except Exception as exc:  # Pillow plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        raise CorruptImageError(f"corrupt image data: {type(exc).__name__}: {exc}") from exc


def _decode_opened(
    img: Image.Image,
    declared: headers.Declared,
    policy: ImagePolicy,
    draft_size: tuple[int, int] | None,
    finish: Callable[[Image.Image], Image.Image] | None,
) -> tuple[Image.Image, tuple[int, int]]:
    width, height = img.size
    _check_caps(img, declared, policy)
    headers.check_exif(img.info.get("exif"))
    orientation = 1
    if img.format in ("JPEG", "MPO"):  # EXIF is already parsed from its segment; no decode needed
        orientation = _orientation(img)
        if draft_size is not None:
            _draft(img, draft_size, swap=orientation in _SWAPPING_ORIENTATIONS)
    factor = _reduction(img.size, draft_size, swap=orientation in _SWAPPING_ORIENTATIONS)
    with _budget(policy.decode_memory).reserve(_estimate(img, declared, factor, policy)):
        if img.format not in ("JPEG", "MPO"):  # may load (PNG with eXIf after the pixels): inside the budget
            orientation = _orientation(img)
            factor = _reduction(img.size, draft_size, swap=orientation in _SWAPPING_ORIENTATIONS)
        img.load()
        rgb = to_rgb_reduced(img, factor)
        method = _TRANSPOSE.get(orientation)
        if method is not None:
            rgb = rgb.transpose(method)
        if finish is not None:
            rgb = finish(rgb)
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return rgb, (width, height)


def _ensure_heif() -> None:
    """Register pillow-heif's opener (format "HEIF") once, without thumbnails, depth or auxiliary images."""
    global _heif_ready
    if _heif_ready:
        return
    with _heif_lock:
        if not _heif_ready:
            try:
                import pillow_heif
            except ImportError:  # not installed: HEIF stays unsupported
                logger.warning("pillow-heif is not installed: HEIC/HEIF images are UNSUPPORTED_FORMAT")
            else:
                pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
            _heif_ready = True


_heif_ready = False
_heif_lock = threading.Lock()


def _open(data: bytes, policy: ImagePolicy) -> Image.Image:
    if "HEIF" in policy.formats:
        _ensure_heif()
    Image.init()  # load every plugin's registration once, so the filter below sees them all
    formats = sorted(f for f in policy.formats if f in Image.OPEN)  # HEIF without pillow-heif: absent
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        raise
    except Image.UnidentifiedImageError as exc:
        claimed = _claimed_format(data, policy.formats)
        if claimed is not None:
            raise CorruptImageError(f"data starts like {claimed} but cannot be parsed") from exc
        raise UnsupportedFormatError(
            f"not an image in an allowed format ({', '.join(sorted(policy.formats))}); starts with {data[:8]!r}"
        ) from exc


def sniff_format(data: bytes, policy: ImagePolicy) -> str | None:
    """The allowed format ``data`` starts like (by its magic number), e.g. ``"JPEG"``; None if none."""
    return _claimed_format(data, policy.formats)


def _claimed_format(data: bytes, formats: frozenset[str]) -> str | None:
    if "WEBP" in formats and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if "AVIF" in formats and brand in _AVIF_BRANDS:
            return "AVIF"
        if "HEIF" in formats and brand in _HEIF_BRANDS:
            return "HEIF"
    for fmt, prefixes in _MAGIC.items():
        if fmt in formats and data.startswith(prefixes):
            return fmt
    return None


def _check_caps(img: Image.Image, declared: headers.Declared, policy: ImagePolicy) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"image declares an empty size {width}x{height}")
    if width * height > policy.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the cap of {policy.max_pixels}"
        )
    # GIF, TIFF: counted by the walk (Pillow's own count walks every frame); PNG (acTL), WebP (libwebp's
    # demuxer), AVIF, HEIF, MPO: declared in a header, so Pillow's count is cheap.
    cheap = img.format not in ("GIF", "TIFF")
    frames = int(getattr(img, "n_frames", 1)) if cheap else declared.frames or 1
    if frames > policy.max_frames:
        raise ImageTooLargeError(
            f"image has {frames} frames, over the cap of {policy.max_frames}", limit="image_frames"
        )


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


def _reduction(size: tuple[int, int], draft_size: tuple[int, int] | None, *, swap: bool) -> int:
    """The integer factor by which the decoded image may be reduced and still be at least twice
    ``draft_size`` (as displayed) in both directions: 1 when there is no target."""
    if draft_size is None:
        return 1
    target_w, target_h = (draft_size[1], draft_size[0]) if swap else draft_size
    if target_w <= 0 or target_h <= 0:
        raise ValueError(f"draft_size must be positive, got {draft_size}")
    return max(1, min(size[0] // (2 * target_w), size[1] // (2 * target_h)))


def _estimate(img: Image.Image, declared: headers.Declared, factor: int, policy: ImagePolicy) -> int:
    """Bytes this decode will hold at its peak: the decoded pixels in their own mode (or the TIFF tile
    being decoded, if larger), a library's own buffer, the RGB result and one strip of conversion."""
    width, height = img.size
    pixels = width * height
    native = max(pixels, declared.work_pixels) * _STORAGE.get(img.mode, 4)
    library = pixels * 4 if img.format in _LIBRARY_COPY else declared.work_pixels * 4
    result = -(-width // factor) * -(-height // factor) * 4
    # Pillow keeps a pointer per row of every image it holds: a 1 x 40,000,000 PNG holds 320 MB of row
    # pointers for its decoded image and as much again for its RGB copy, more than its pixels.
    rows = ROW_POINTER_BYTES * (height + -(-height // factor))
    need = native + library + result + rows + min(pixels, _STRIP_PIXELS) * 48  # float64 arrays of one F tile
    if need > policy.decode_memory:
        raise ImageTooLargeError(
            f"decoding this {width}x{height} {img.mode} image needs about {need // MiB} MiB, over the "
            f"decode memory budget of {policy.decode_memory // MiB} MiB (DFSCAN_DECODE_MEMORY)",
            limit="decode_memory",
        )
    return need


class _MemoryBudget:
    """A byte-weighted semaphore: decodes in flight in this process hold at most ``total`` bytes. A bulk
    decode does not take room while an interactive one waits for it (:mod:`worker.inference.lanes`)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._interactive_waiting = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, need: int) -> Iterator[None]:
        interactive = int(lanes.current() == lanes.INTERACTIVE)
        with self._cond:
            self._interactive_waiting += interactive
            try:
                while self.used + need > self.total or (not interactive and self._interactive_waiting):
                    self._cond.wait()
            finally:
                self._interactive_waiting -= interactive
                if interactive:
                    self._cond.notify_all()  # bulk decodes held back for it look again
            self.used += need
        try:
            yield
        finally:
            self._release(need)

    @contextlib.contextmanager
    def take(self, need: int) -> Iterator[None]:
        """Count ``need`` bytes now, without waiting (the caller already holds memory that covers them)."""
        with self._cond:
            self.used += need
        try:
            yield
        finally:
            self._release(need)

    def _release(self, need: int) -> None:
        with self._cond:
            self.used -= need
            self._cond.notify_all()


_budgets: dict[int, _MemoryBudget] = {}
_budgets_lock = threading.Lock()


def _budget(total: int) -> _MemoryBudget:
    with _budgets_lock:
        budget = _budgets.get(total)
        if budget is None:
            budget = _budgets[total] = _MemoryBudget(total)
        return budget


def hold_decoded(
    policy: ImagePolicy, need: int, *, wait: bool = True
) -> contextlib.AbstractContextManager[None]:
    """Reserve ``need`` bytes of this process's decode memory budget for pixels kept after their decode
    (a full-size image while its faces are found and cropped), released on exit; waits for room. With
    ``wait=False`` (called from a decode's ``finish``, while that decode still holds its own share) the
    bytes are counted at once, so the pixels are never outside the budget and nothing waits holding them."""
    budget = _budget(policy.decode_memory)
    need = max(0, min(need, policy.decode_memory))
    return budget.reserve(need) if wait else budget.take(need)


def to_rgb_reduced(img: Image.Image, factor: int = 1) -> Image.Image:
    """:func:`to_rgb` then ``reduce(factor)``, computed in tiles of about a megapixel so that no second
    full-size copy of a large image exists (the result is the same as converting the whole image, then
    reducing it: tile edges are multiples of ``factor``)."""
    width, height = img.size
    if width * height <= _STRIP_PIXELS:
        rgb = to_rgb(img)
        return rgb.reduce(factor) if factor > 1 else rgb
    boxes = list(_tiles(width, height, factor))
    span = _float_range(img, boxes) if img.mode == "F" else None
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for box in boxes:
        tile = img.crop(box)
        rgb = _float_to_rgb(tile, *span) if span is not None else to_rgb(tile)
        if factor > 1:
            rgb = rgb.reduce(factor)
        out.paste(rgb, (box[0] // factor, box[1] // factor))
    return out


def _tiles(width: int, height: int, factor: int) -> Iterator[tuple[int, int, int, int]]:
    """Boxes of about ``_STRIP_PIXELS`` covering the image: whole rows when a row is short enough, else
    pieces of rows; every edge but the last is a multiple of ``factor``."""
    cols = min(width, max(factor, _STRIP_PIXELS // factor * factor))
    rows = max(factor, (_STRIP_PIXELS // cols) // factor * factor)
    for top in range(0, height, rows):
        for left in range(0, width, cols):
            yield left, top, min(width, left + cols), min(height, top + rows)


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
        return _float_to_rgb(img, *_float_range(img, [(0, 0, img.width, img.height)]))
    has_alpha = "A" in img.getbands() or "a" in img.getbands() or img.info.get("transparency") is not None
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _float_range(img: Image.Image, boxes: list[tuple[int, int, int, int]]) -> tuple[float, float]:
    """(lo, hi) to stretch an F image over 0..255: 0..1 when every finite value is in it, else min..max."""
    lo, hi = np.inf, -np.inf
    for box in boxes:
        farr = np.asarray(img.crop(box), dtype=np.float64)
        finite = farr[np.isfinite(farr)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not np.isfinite(lo):
        lo, hi = 0.0, 1.0
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    return float(lo), float(hi)


def _float_to_rgb(img: Image.Image, lo: float, hi: float) -> Image.Image:
    farr = np.asarray(img, dtype=np.float64)
    scaled = (np.nan_to_num(farr, nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8)).convert("RGB")
