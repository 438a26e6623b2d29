"""A picture for moderators: an image with its judged boxes drawn and labelled with p(fake).

Pure Pillow (``ImageDraw``): :func:`annotate` draws onto a copy, never onto the image it is given.
Boxes are ``(x, y, w, h)`` in pixels of the EXIF-oriented image (what the verdict's faces carry); a
verdict judged on the whole image is drawn as one box around the whole picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# Colour by verdict: red flags, green passes, grey was not judged (no score).
COLOURS: dict[str, tuple[int, int, int]] = {
    "fake": (230, 25, 25),
    "real": (20, 170, 60),
    "not_applicable": (128, 128, 128),
}
_OTHER = (128, 128, 128)


@dataclass(frozen=True)
class Mark:
    """One box to draw: where, its p(fake) (None when not judged) and its label."""

    box: tuple[int, int, int, int]
    fake_score: float | None
    label: str


def caption(mark: Mark) -> str:
    return mark.label if mark.fake_score is None else f"{mark.label} {mark.fake_score:.2f}"


def annotate(image: Image.Image, marks: Sequence[Mark]) -> Image.Image:
    """A copy of ``image`` (as RGB) with each mark's box outlined in its verdict's colour and captioned
    ``"<label> <p(fake)>"``. Boxes are clipped to the image; line width and text size follow the image size."""
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    draw = ImageDraw.Draw(out)
    width, height = out.size
    line = max(1, round(min(width, height) / 200))
    font = ImageFont.load_default(size=max(10, min(48, round(min(width, height) / 30))))
    for mark in marks:
        colour = COLOURS.get(mark.label, _OTHER)
        x, y, w, h = mark.box
        left, top = max(0, min(width - 1, x)), max(0, min(height - 1, y))
        right, bottom = max(left, min(width - 1, x + w - 1)), max(top, min(height - 1, y + h - 1))
        draw.rectangle((left, top, right, bottom), outline=colour, width=line)
        text = caption(mark)
        tl, tt, tr, tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tr - tl + 2 * line, tb - tt + 2 * line
        # Above the box when there is room, else inside its top edge.
        ty = top - th if top - th >= 0 else top
        tx = max(0, min(left, width - tw))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=colour)
        draw.text((tx + line - tl, ty + line - tt), text, fill=(255, 255, 255), font=font)
    return out
