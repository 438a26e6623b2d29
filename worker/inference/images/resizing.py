"""The geometric half of the checkpoint's preprocessing (resize, centre crop), torch-free.

Kept apart from :mod:`worker.inference.model.preprocess` so a decode child process (see
:mod:`worker.inference.images.decode_pool`) can resize without importing torch.

The output size is computed before any pixel is resampled. With ``shortest_edge`` and a centre crop, the
intermediate (resized, not yet cropped) image is made only when it is small (``MAX_INTERMEDIATE_PIXELS``,
an aspect ratio up to about 16:1 at ``shortest_edge`` 256), which matches ``transformers`` exactly. Beyond
it, a 1,000,000x40 image is not resized to 6,400,000x256 (6.5 GB and 25 s on main) and then cropped: the
crop's window in the source is resized straight to the crop size with Pillow's ``resize(box=...)``, which
samples the same positions with the same filter (measured: at most 1 grey level of 255 apart, from
Pillow's 8-bit rounding between its two passes). So the cost of this step is bounded by the output size
whatever the aspect ratio, and no aspect-ratio cap is needed. With a fixed ``{height, width}`` size, a side
longer than ``MAX_RESAMPLED_SIDE`` is box-reduced first (Pillow's filter coefficients grow with the input:
a 40,000,000x1 PNG took 800 MB to resize to 224x224).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from worker.inference.hashing.pdq import HASH_SIDE, Pdq, pdq_dihedral
from worker.inference.images.decode import ImagePolicy, decode_in_process
from worker.inference.images.previews import preview_jpeg

# Largest resized-but-not-yet-cropped image made on the exact path (3 MiB of RGB).
MAX_INTERMEDIATE_PIXELS = 1 << 20
# Longest side resampled directly. Pillow's resize builds filter coefficients for every output pixel over
# its whole support, about 32 bytes per input pixel along an axis: 1.3 GB for a 40,000,000x1 image.
# Longer sides are first reduced (box average) by the integer factor that brings them under this.
MAX_RESAMPLED_SIDE = 1 << 16


@dataclass(frozen=True)
class Resize:
    """``size`` is the output (height, width); with ``shortest_edge``, resize keeping the aspect ratio so
    the shorter side is ``shortest_edge``, then centre-crop to ``size`` (padding with black if smaller)."""

    size: tuple[int, int]
    resample: int
    do_resize: bool = True
    shortest_edge: int | None = None


def resized_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after a ``shortest_edge`` resize, computed as ``transformers`` does."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _axis(src: int, new: int, crop: int) -> tuple[float, float, int, int]:
    """For one axis: the source window (start, end), the output length to resample it to, and the offset
    at which it lands in the crop (non-zero only when the resized image is smaller than the crop)."""
    offset = (new - crop) // 2  # as Image.crop((left, top, ...)) of the resized image
    scale = src / new
    if offset >= 0:
        return offset * scale, (offset + crop) * scale, crop, 0
    return 0.0, float(src), new, -offset


def apply(image: Image.Image, spec: Resize) -> Image.Image:
    """Resize (and crop) ``image`` as ``spec`` says."""
    resample = Image.Resampling(spec.resample)
    if spec.shortest_edge is None:
        if spec.do_resize:
            height, width = spec.size
            factors = (-(-image.width // MAX_RESAMPLED_SIDE), -(-image.height // MAX_RESAMPLED_SIDE))
            if factors != (1, 1):  # only sides over 65,536 pixels: normal images stay exact
                image = image.reduce(factors)
            image = image.resize((width, height), resample=resample)
        return image
    crop_height, crop_width = spec.size
    width, height = image.size
    new_w, new_h = resized_size(width, height, spec.shortest_edge) if spec.do_resize else (width, height)
    if spec.do_resize and new_w * new_h <= MAX_INTERMEDIATE_PIXELS:
        image = image.resize((new_w, new_h), resample=resample)
        left, top = (new_w - crop_width) // 2, (new_h - crop_height) // 2
        return image.crop((left, top, left + crop_width, top + crop_height))  # pads with black if smaller
    x0, x1, out_w, pad_x = _axis(width, new_w, crop_width)
    y0, y1, out_h, pad_y = _axis(height, new_h, crop_height)
    if not spec.do_resize:
        window = image.crop((int(x0), int(y0), int(x1), int(y1)))
    else:
        window = image.resize((out_w, out_h), resample=resample, box=(x0, y0, x1, y1))
    if (out_w, out_h) == (crop_width, crop_height):
        return window
    canvas = Image.new(window.mode, (crop_width, crop_height))
    canvas.paste(window, (pad_x, pad_y))
    return canvas


def decode_resized(
    data: bytes, policy: ImagePolicy, spec: Resize, draft_size: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode in the calling process and resize: what a decode child runs for ``load_pixels``. Returns the
    model-sized RGB image and the original (width, height) as displayed."""
    return decode_in_process(data, policy, draft_size, finish=lambda image: apply(image, spec))


def decode_resized_hashed(
    data: bytes, policy: ImagePolicy, spec: Resize, draft_size: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int], Pdq, tuple[bytes, ...], bytes | None]:
    """:func:`decode_resized`, the PDQ hash (with its seven dihedral variants) of the decoded pixels:
    taken from the model-sized image when the model's resize keeps the whole frame (a fixed size) at
    least ``HASH_SIDE`` square, else from the decoded image (before a centre crop, or when the model's input
    is smaller than the hash's: hashing/pdq.py), and the decoded image's JPEG preview (None when
    ``policy.previews`` is off)."""
    hashed: list[tuple[Pdq, tuple[bytes, ...]]] = []
    previews: list[bytes | None] = []

    def finish(image: Image.Image) -> Image.Image:
        resized = apply(image, spec)
        whole = spec.do_resize and spec.shortest_edge is None and min(spec.size) >= HASH_SIDE
        hashed.append(pdq_dihedral(resized if whole else image))
        previews.append(preview_jpeg(image) if policy.previews else None)
        return resized

    image, original = decode_in_process(data, policy, draft_size, finish=finish)
    pdq, variants = hashed[0]
    return image, original, pdq, variants, previews[0]
