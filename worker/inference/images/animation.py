"""Animated images (GIF, APNG, WebP, AVIF) as clips: their frames sampled like a video's.

An animation is judged on up to ``count`` frames spread evenly over its frames (the video's
``DFSCAN_VIDEO_FRAMES``), each scaled to a longest side of at most ``side`` pixels (the video's
``frame_side``), so a fake face on frame 2 is seen and the cost is bounded by the sample, not by the
animation's length. What may be decoded at all is decided first by :mod:`worker.inference.images.decode`
(allow-list, header walk, pixel and frame caps, memory admission): :func:`frame_count` walks the
header, and the Judge decodes frame 1 through the ordinary bounded decode before the frames are read.

Each frame's time is the sum of the durations of the frames before it (``info["duration"]``, in
milliseconds); an animation that declares no durations is timed at 10 frames a second. A frame is
converted to RGB the way :func:`~worker.inference.images.decode.to_rgb` converts images (transparency on white).

Pure: Pillow only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image

from worker.inference.images import headers
from worker.inference.images.decode import ImagePolicy, sniff_format, to_rgb
from worker.inference.video.decode import scaled_size

# Formats whose files may hold several frames that are all pictures of the same scene over time.
ANIMATED = frozenset({"GIF", "PNG", "WEBP", "AVIF"})
# Seconds between frames of an animation that declares no durations.
_DEFAULT_STEP = 0.1


@dataclass(frozen=True)
class AnimationFrame:
    """A sampled frame: its time (s), its RGB pixels scaled to the sample side, its displayed size."""

    t: float
    image: Image.Image
    size: tuple[int, int]


def frame_count(data: bytes, policy: ImagePolicy) -> int:
    """How many frames ``data`` holds (1 for a still image or one this module does not sample), read from
    its header after the header walk (:func:`worker.inference.images.headers.inspect`) passed: GIF by the walk,
    APNG by its ``acTL`` chunk, WebP by its ``ANMF`` chunks, AVIF by Pillow's (cheap) count. Anything
    wrong with the file is left for the image decode to report."""
    fmt = sniff_format(data, policy)
    if fmt not in ANIMATED:
        return 1
    try:
        declared = headers.inspect(data, fmt, max_pixels=policy.max_pixels, max_frames=policy.max_frames)
        if fmt == "GIF":
            count = declared.frames or 1
        elif fmt == "PNG":
            count = _apng_frames(data)
        elif fmt == "WEBP":
            count = _webp_frames(data, policy.max_frames)
        else:
            with Image.open(io.BytesIO(data), formats=[fmt]) as img:
                width, height = img.size
                count = int(getattr(img, "n_frames", 1)) if width * height <= policy.max_pixels else 1
    except Exception:
        return 1
    return count if 1 <= count <= policy.max_frames else 1  # over the cap: the decode refuses it


def _apng_frames(data: bytes) -> int:
    """``num_frames`` of the ``acTL`` chunk before the first ``IDAT`` (1 without one)."""
    pos = 8
    for _ in range(100_000):
        if pos + 12 > len(data):
            break
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"acTL" and length >= 8:
            return int.from_bytes(data[pos + 8 : pos + 12], "big")
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return 1


def _webp_frames(data: bytes, cap: int) -> int:
    """The number of ``ANMF`` chunks of an animated WebP (counted up to ``cap + 1``; 1 without one)."""
    pos, count = 12, 0
    for _ in range(100_000):
        if pos + 8 > len(data) or count > cap:
            break
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        count += data[pos : pos + 4] == b"ANMF"
        pos += 8 + size + (size & 1)
    return max(1, count)


def sample_indices(n: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``n`` frames, first and last included (all of them
    when ``n <= count``)."""
    if n <= count:
        return list(range(n))
    if count <= 1:
        return [0]
    return sorted({round(j * (n - 1) / (count - 1)) for j in range(count)})


def animation_frames(
    data: bytes,
    policy: ImagePolicy,
    count: int,
    side: int,
    check: Callable[[str], None] | None = None,
) -> Iterator[AnimationFrame]:
    """Yield the sampled frames of animated ``data`` in order, one at a time. ``check(what)`` is called
    before every frame read (the job's budget). Raises what Pillow raises on a broken frame."""
    with Image.open(io.BytesIO(data), formats=list(policy.formats & ANIMATED)) as img:
        n = min(int(getattr(img, "n_frames", 1)), policy.max_frames)
        wanted = set(sample_indices(n, count))
        t_ms = 0.0
        last_t = -1.0
        for i in range(max(wanted) + 1):
            if check is not None:
                check("decoding the animation")
            img.seek(i)
            # Declared durations time the frames; none declared (yet): 10 frames a second. Kept increasing.
            t = max(t_ms / 1000.0 if t_ms > 0 else i * _DEFAULT_STEP, last_t + 0.001 if i else 0.0)
            last_t = t
            t_ms += float(img.info.get("duration") or 0)
            if i in wanted:
                size = img.size
                rgb = to_rgb(img)
                small = scaled_size(size[0], size[1], side)
                if small != size:
                    rgb = rgb.resize(small, Image.Resampling.BOX)
                yield AnimationFrame(t=round(t, 6), image=rgb, size=size)


def list_animation_frames(data: bytes, policy: ImagePolicy, count: int, side: int) -> list[AnimationFrame]:
    """:func:`animation_frames` as a list: what a decode child sends back (at most ``count`` frames of
    ``side`` pixels)."""
    return list(animation_frames(data, policy, count, side))
