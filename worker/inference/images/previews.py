"""Small JPEG previews of what a job judged, made from pixels already decoded (never a second decode), so
the review console can show any verdict's picture without the original bytes: a still image's preview, and
thumbnails of a clip's sampled frames spread over its duration.

Bounded by construction: one preview of at most :data:`PREVIEW_SIDE` pixels a side per image, at most
:data:`MAX_THUMBS` thumbnails of at most :data:`THUMB_SIDE` pixels a side per clip, each refused above
:data:`MAX_PREVIEW_BYTES` (the database checks the same bound).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TypeVar

from PIL import Image

# A still image's preview: large enough to see the faces the console boxes over it, a few tens of KB.
PREVIEW_SIDE = 320
# A clip frame's thumbnail under the console's timeline: a few KB each.
THUMB_SIDE = 160
# Thumbnails kept per clip, spread over the sampled frames (first and last included).
MAX_THUMBS = 16
# JPEG quality: a preview is for recognising the picture, not for judging it again.
QUALITY = 70
# The most one preview may weigh (a 320 px JPEG at quality 70 is far below; the column checks it too).
MAX_PREVIEW_BYTES = 65536

T = TypeVar("T")


def preview_jpeg(image: Image.Image, side: int = PREVIEW_SIDE) -> bytes | None:
    """``image`` reduced to fit ``side`` x ``side`` (aspect kept, never enlarged) as JPEG bytes; None when
    the result would pass :data:`MAX_PREVIEW_BYTES` (the verdict then simply has no preview)."""
    if side <= 0:
        raise ValueError(f"a preview side must be positive, got {side}")
    small = image.copy()
    small.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if small.mode != "RGB":
        small = small.convert("RGB")
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=QUALITY)
    data = buf.getvalue()
    return data if len(data) <= MAX_PREVIEW_BYTES else None


def spread(items: Sequence[T], count: int = MAX_THUMBS) -> list[T]:
    """At most ``count`` of ``items``, evenly spaced, the first and last included, in order."""
    if count <= 0:
        return []
    n = len(items)
    if n <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    picks = sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})
    return [items[i] for i in picks]


class Thumbnails:
    """Thumbnails of a clip's sampled frames, made as the frames pass (``add``), of which :meth:`kept`
    keeps at most :data:`MAX_THUMBS` spread over the clip. Off (``enabled`` False): nothing is made."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._made: list[tuple[float, bytes]] = []

    def add(self, t: float, image: Image.Image) -> None:
        if not self.enabled:
            return
        jpeg = preview_jpeg(image, THUMB_SIDE)
        if jpeg is not None:
            self._made.append((t, jpeg))

    def kept(self) -> list[tuple[float, bytes]]:
        return spread(sorted(self._made, key=lambda made: made[0]))
