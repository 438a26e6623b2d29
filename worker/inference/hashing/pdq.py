"""Perceptual hashes of the pixels the road already decoded: PDQ for an image, one PDQ per sampled frame
(vPDQ) for a video or an animation.

PDQ (Meta's 256-bit perceptual hash) comes from the ``pdqhash`` wheel, the C++ reference implementation's
bindings. Every hash is taken from a ``HASH_SIDE`` x ``HASH_SIDE`` box-filtered copy of whatever RGB image is
at hand (the model-sized image, a full-size decode for faces, a sampled video frame): PDQ reduces every
input to 64x64 with its own box (Jarosz) filters anyway, and hashing 128x128 costs about 0.4 ms of CPU where
a 512x512 input costs 9 ms. The same photo reached through different sizes hashes within a few bits
(measured on the scikit-image photos: 0-16 bits of 256), far inside the match distance of 31.

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
HASH_SIDE = 128
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
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (HASH_SIDE, HASH_SIDE):
        image = image.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(image)


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
