"""Perceptual hashes of the pixels the road already decoded: PDQ for an image, one PDQ per sampled frame
(vPDQ) for a video or an animation.

PDQ (Meta's 256-bit perceptual hash) comes from the ``pdqhash`` wheel, the C++ reference implementation's
bindings. Every hash is taken from a ``HASH_SIDE`` x ``HASH_SIDE`` box-filtered (area-averaged) copy of
whatever RGB image is at hand (the model-sized image, a full-size decode for faces, a sampled video frame),
after flat bands along its edges are trimmed (:func:`content_box`: letterbox borders, a screenshot's bars).
PDQ itself reduces every input to 64x64 with box (Jarosz) filters whose window it derives from the input's
size; handing it 64x64 pixels already averaged costs about 0.13 ms of CPU (a 512x512 input costs 9 ms) and
measured better than 128 or 256 on the transform suite (tests/fixtures/transforms.py): at 128 the wheel's
window is one pixel, which decimates without averaging, and mirrored copies landed 20-46 bits apart.

``quality`` (0-100) says how much gradient the image has; below the quality floor a hash is stored and
marked but never matched (a flat or nearly blank image matches too much).

The eight dihedral hashes (rotations by 90, 180, 270 degrees and their mirrors) are computed for a query
only, in one pass (``pdqhash.compute_dihedral``): stored hashes are the upright ones, so a mirrored or
rotated re-upload matches through one of the query's eight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pdqhash
from PIL import Image

from dfscan.verdicts import BankMatch, FrameHash, Stored

# The side of the square copy every hash is computed from (see the module docstring).
HASH_SIDE = 64
# Bytes in a 256-bit PDQ hash.
HASH_BYTES = 32


@dataclass(frozen=True)
class Pdq:
    """One PDQ hash (32 bytes, the reference's bit order: hex as ThreatExchange writes it) and its quality;
    ``t`` is the frame's time in seconds in a clip (0 for an image)."""

    bits: bytes
    quality: int
    t: float = 0.0

    @property
    def hex(self) -> str:
        return self.bits.hex()

    @classmethod
    def from_hex(cls, text: str, quality: int = 100, t: float = 0.0) -> Pdq:
        """A hash as ThreatExchange and HMA write it (64 hex digits); ValueError otherwise."""
        text = text.strip().lower()
        if len(text) != 2 * HASH_BYTES:
            raise ValueError(f"a PDQ hash has 64 hex digits, got {len(text)}")
        return cls(bytes.fromhex(text), quality, t)


@dataclass(frozen=True)
class MediaHash:
    """What is matched for one source: its frames' hashes (one for an image) and, for an image, the
    seven other dihedral variants of its hash (queries only)."""

    frames: tuple[Pdq, ...]
    variants: tuple[bytes, ...] = ()
    video: bool = False

    @property
    def image(self) -> Pdq | None:
        return self.frames[0] if not self.video and self.frames else None


def _pack(bits: np.ndarray) -> bytes:
    """The 256 bits in the order ThreatExchange's Python hasher writes them (the wheel's first bit is the
    most significant of the hex)."""
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()


def _square(image: Image.Image) -> np.ndarray:
    """The ``HASH_SIDE`` square the hash is computed from: the luma of ``image`` (ITU-R 601, PDQ's own
    weights, so the wheel's luma of the grey copy is the grey itself), trimmed of flat bands and
    box-filtered, as a grey RGB array. Averaging one channel instead of three, and trimming on the same
    grey copy, keeps a 224-pixel image's hash at about 0.4 ms of CPU."""
    grey = image.convert("L")
    for _pass in range(_TRIM_PASSES):  # a border, then a flat band inside it (a sky under a letterbox)
        box = _content_box(grey)
        if box == (0, 0, grey.width, grey.height):
            break
        grey = grey.crop(box)
    if grey.size != (HASH_SIDE, HASH_SIDE):
        grey = grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return np.repeat(np.asarray(grey)[:, :, None], 3, axis=2)


def content_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The box of ``image`` inside flat bands along its edges (a letterbox border, an app's title bar, the
    empty part of a screenshot), found on a small grey copy: a band is rows (or columns) from the edge whose
    grey levels vary by less than ``_FLAT_STD`` and stay within ``_FLAT_DELTA`` of the edge's own level,
    at most ``_MAX_TRIM`` of the side. Stored and queried hashes both trim, so a photo with a flat sky
    loses the same band whenever it is hashed."""
    return _content_box(image.convert("L"))


def _content_box(grey_image: Image.Image) -> tuple[int, int, int, int]:
    small = grey_image
    scale = max(small.size) / _TRIM_SIDE
    if scale > 1:
        small = small.resize(
            (max(1, round(small.width / scale)), max(1, round(small.height / scale))), Image.Resampling.BOX
        )
    grey = np.asarray(small, dtype=np.float32)
    h, w = grey.shape
    # each row's and column's mean and mean square, once: a band's flatness is read from them
    square = grey * grey
    rows = grey.mean(axis=1), square.mean(axis=1)
    cols = grey.mean(axis=0), square.mean(axis=0)
    top = _flat_run(*rows)
    bottom = _flat_run(rows[0][::-1], rows[1][::-1])
    left = _flat_run(*cols)
    right = _flat_run(cols[0][::-1], cols[1][::-1])
    if top + bottom >= h - 4 or left + right >= w - 4:  # nearly all flat: keep it whole
        return 0, 0, grey_image.width, grey_image.height
    sx, sy = grey_image.width / w, grey_image.height / h
    return (
        round(left * sx),
        round(top * sy),
        grey_image.width - round(right * sx),
        grey_image.height - round(bottom * sy),
    )


# Trimming is decided on a copy at most this many pixels a side.
_TRIM_SIDE = 256
_FLAT_STD = 6.0
_FLAT_DELTA = 10.0
_MAX_TRIM = 0.3
_TRIM_PASSES = 3


def _flat_run(mean: np.ndarray, mean_square: np.ndarray) -> int:
    """Lines (rows or columns, by their ``mean`` and ``mean_square`` grey levels, from the edge) that are
    flat and at the first line's level."""
    limit = int(len(mean) * _MAX_TRIM)
    level = float(mean[0])
    std = np.sqrt(np.maximum(mean_square[:limit] - mean[:limit] ** 2, 0.0))
    flat = (std < _FLAT_STD) & (np.abs(mean[:limit] - level) < _FLAT_DELTA)
    run = int(np.argmin(flat)) if not flat.all() else len(flat)
    return run if run >= 2 else 0


def pdq_of(image: Image.Image, t: float = 0.0) -> Pdq:
    """The PDQ hash and quality of ``image`` (any size, any mode)."""
    bits, quality = pdqhash.compute(_square(image))
    return Pdq(_pack(bits), int(quality), t)


def pdq_dihedral(image: Image.Image) -> tuple[Pdq, tuple[bytes, ...]]:
    """The upright hash of ``image`` and its seven other dihedral variants, in one pass."""
    hashes, quality = pdqhash.compute_dihedral(_square(image))
    packed = [_pack(h) for h in hashes]
    return Pdq(packed[0], int(quality)), tuple(packed[1:])


def hamming(a: bytes, b: bytes) -> int:
    """Bits that differ between two hashes of the same length."""
    return int.from_bytes(a, "big").__xor__(int.from_bytes(b, "big")).bit_count()


@dataclass(frozen=True)
class FrameShare:
    """How two clips' frames match (vPDQ): the share of the query's good frames within the distance of some
    frame of the other, and the other's share matched by some query frame (percent)."""

    query_percent: float
    compared_percent: float


def frame_share(
    query: tuple[Pdq, ...], compared: tuple[Pdq, ...], distance: int, quality_floor: int
) -> FrameShare:
    """vPDQ's brute-force comparison, as the reference implementation does it: frames below the quality
    floor are left out on both sides, then each side's share of frames with a match on the other."""
    q = [f.bits for f in query if f.quality >= quality_floor]
    c = [f.bits for f in compared if f.quality >= quality_floor]
    if not q or not c:
        return FrameShare(0.0, 0.0)
    qa = np.frombuffer(b"".join(q), dtype=np.uint8).reshape(len(q), HASH_BYTES)
    ca = np.frombuffer(b"".join(c), dtype=np.uint8).reshape(len(c), HASH_BYTES)
    dist = np.bitwise_count(qa[:, None, :] ^ ca[None, :, :]).sum(axis=2)
    close = dist <= distance
    return FrameShare(100.0 * close.any(axis=1).mean(), 100.0 * close.any(axis=0).mean())


@dataclass(frozen=True)
class NearPolicy:
    """How sources are matched: the largest Hamming distance that matches, the quality under which a hash
    is never matched, and vPDQ's share of a video's frames that must match (percent)."""

    distance: int = 31
    quality_floor: int = 50
    video_percent: float = 80.0


@dataclass(frozen=True)
class Near:
    """What the near-duplicate look-up found for a source: an earlier verdict of the same tenant and model
    version to answer with (``stored``, the job id ``of`` and the ``distance``; None when reuse is off or
    nothing matched), the hash bank entries matched, and the label a matched bank forces (or None)."""

    of: str | None = None
    distance: int | None = None
    stored: Stored | None = None
    matches: tuple[BankMatch, ...] = ()
    force_label: str | None = None


# ``similar(hash, model_version)``: the edge's near-duplicate look-up for one source (its tenant bound
# by the caller). Raises when its database is down, like the duplicate cache.
Similar = Callable[[MediaHash, str], "Near | None"]


def frame_hashes(frames: tuple[Pdq, ...]) -> tuple[FrameHash, ...]:
    """Hashes as a verdict carries them."""
    return tuple(FrameHash(f.t, f.hex, f.quality) for f in frames)
