"""A picture for moderators: an image with its judged boxes drawn and labelled with p(fake).

Pure Pillow (``ImageDraw``): :func:`annotate` draws onto a copy, never onto the image it is given.
:class:`Pictures` collects a verdict's frames from the region road while it judges (``dfscan scan
--annotate``), so the picture needs no second read or decode of the source.
Boxes are ``(x, y, w, h)`` in pixels of the EXIF-oriented image (what the verdict's faces carry); a
verdict judged on the whole image is drawn as one box around the whole picture.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from dfscan.verdicts import NOT_APPLICABLE, Heatmap, Verdict, label_for

if TYPE_CHECKING:
    from worker.inference.regions import ClipFrame, FrameScore

# Colour by verdict: red flags, green passes, grey was not judged (no score).
COLOURS: dict[str, tuple[int, int, int]] = {
    "fake": (230, 25, 25),
    "real": (20, 170, 60),
    "not_applicable": (128, 128, 128),
}
_OTHER = (128, 128, 128)
Box = tuple[int, int, int, int]


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


def overlay(image: Image.Image, heatmaps: Sequence[Heatmap], *, strength: float = 0.6) -> Image.Image:
    """A copy of ``image`` (as RGB) with each heatmap drawn over the area it covers (the whole image
    when its box is None): red, as opaque as ``strength`` where the cell is 1, clear where it is 0.
    Cells are scaled up with bilinear smoothing, so the patches' edges do not read as evidence."""
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    for heat in heatmaps:
        x, y, w, h = heat.box if heat.box is not None else (0, 0, out.width, out.height)
        if w <= 0 or h <= 0 or not heat.grid:
            continue
        rows, cols = len(heat.grid), len(heat.grid[0])
        cells = Image.new("L", (cols, rows))
        cells.putdata([round(255 * strength * min(1.0, max(0.0, v))) for row in heat.grid for v in row])
        alpha = cells.resize((w, h), Image.Resampling.BILINEAR)
        red = Image.new("RGB", (w, h), (255, 0, 0))
        region = out.crop((x, y, x + w, y + h))
        out.paste(Image.composite(red, region, alpha), (x, y))
    return out


# --- videos: a contact sheet of the sampled frames -------------------------------------------------

THUMB = 240  # a frame's thumbnail fits in THUMB x THUMB pixels
CAPTION_H = 22  # the strip under each thumbnail: time, label, p(fake)
PAD = 6  # between cells and around the sheet
_BACKDROP = (24, 24, 24)


@dataclass(frozen=True)
class Tile:
    """One sampled frame on a contact sheet: the frame as sampled, its time in seconds, its p(fake)
    (None: not judged) and label, and its marks with boxes in pixels of ``size``, the frame as decoded
    (None: the image's own size), which may be larger than the sampled image."""

    image: Image.Image
    t: float
    fake_score: float | None
    label: str
    marks: Sequence[Mark] = ()
    size: tuple[int, int] | None = None


def sheet_size(n: int, *, columns: int = 4, thumb: int = THUMB) -> tuple[int, int]:
    """The contact sheet's (width, height) for ``n`` tiles: ``columns`` a row (fewer when fewer tiles),
    each cell ``thumb`` wide and ``thumb + CAPTION_H`` high, ``PAD`` between cells and around them."""
    if n < 1 or columns < 1 or thumb < 16:
        raise ValueError(
            f"a contact sheet needs n >= 1, columns >= 1, thumb >= 16; got {n}, {columns}, {thumb}"
        )
    cols = min(columns, n)
    rows = -(-n // cols)
    return PAD + cols * (thumb + PAD), PAD + rows * (thumb + CAPTION_H + PAD)


def tile_caption(tile: Tile) -> str:
    score = "" if tile.fake_score is None else f" {tile.fake_score:.2f}"
    return f"{tile.t:.2f}s {tile.label}{score}"


def contact_sheet(tiles: Sequence[Tile], *, columns: int = 4, thumb: int = THUMB) -> Image.Image:
    """A grid of ``tiles`` in the given order (time order for a verdict's frames): each frame scaled to
    fit ``thumb`` x ``thumb``, its marks drawn (boxes scaled from the decoded size, coloured and captioned
    like :func:`annotate`), framed in its own verdict's colour, with ``"<t>s <label> <p(fake)>"`` in a
    strip of that colour under it. Size: :func:`sheet_size`."""
    width, height = sheet_size(len(tiles), columns=columns, thumb=thumb)
    cols = min(columns, len(tiles))
    sheet = Image.new("RGB", (width, height), _BACKDROP)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(10, CAPTION_H - 8))
    for k, tile in enumerate(tiles):
        left = PAD + (k % cols) * (thumb + PAD)
        top = PAD + (k // cols) * (thumb + CAPTION_H + PAD)
        colour = COLOURS.get(tile.label, _OTHER)
        scale = thumb / max(tile.image.width, tile.image.height)
        size = (max(1, round(tile.image.width * scale)), max(1, round(tile.image.height * scale)))
        small = tile.image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        src_w, src_h = tile.size or tile.image.size
        sx, sy = size[0] / src_w, size[1] / src_h
        marks = [
            Mark(
                (round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy))),
                m.fake_score,
                m.label,
            )
            for m in tile.marks
            for x, y, w, h in [m.box]
        ]
        if marks:
            small = annotate(small, marks)
        sheet.paste(small, (left + (thumb - size[0]) // 2, top + (thumb - size[1]) // 2))
        draw.rectangle((left, top, left + thumb - 1, top + thumb - 1), outline=colour, width=2)
        draw.rectangle((left, top + thumb, left + thumb - 1, top + thumb + CAPTION_H - 1), fill=colour)
        text = tile_caption(tile)
        tl, tt, _, tb = draw.textbbox((0, 0), text, font=font)
        draw.text(
            (left + 4 - tl, top + thumb + (CAPTION_H - (tb - tt)) // 2 - tt),
            text,
            fill=(255, 255, 255),
            font=font,
        )
    return sheet


# --- pictures of a verdict, kept while its source is judged ----------------------------------------


class Pictures:
    """An observer of the region road (``Judge.judge(source, observe=pictures)``): keeps what a verdict's
    picture needs as each frame is judged, so the source is never read or decoded a second time. A
    one-frame source keeps its frame at full size (its boxes are drawn on it); a clip of several frames
    keeps thumbnails (a contact sheet). Call :meth:`picture` with the verdict once it is made."""

    def __init__(self, thumb: int = THUMB) -> None:
        self.thumb = thumb
        # (t, image, size boxes are in, p(fake), faces as (box, p(fake)))
        self._frames: list[
            tuple[float, Image.Image, tuple[int, int], float | None, list[tuple[Box, float]]]
        ] = []
        self._lock = threading.Lock()

    def __call__(self, frame: ClipFrame, score: FrameScore) -> None:
        if frame.image is None:
            return
        faces = [(face.box, face.fake_score) for face in score.faces]
        with self._lock:
            self._frames.append((score.t, frame.image, frame.size, score.fake_score, faces))
            if len(self._frames) > 1:  # a clip: only thumbnails are kept while the rest decode
                self._frames = [
                    (t, _thumbnail(im, self.thumb), size, p, f) for t, im, size, p, f in self._frames
                ]

    def picture(self, verdict: Verdict) -> Image.Image | None:
        """The verdict's picture: the image with its boxes (the whole image framed when it was judged
        whole), or a contact sheet of a video's or an animation's frames; None when nothing was kept."""
        threshold = 0.5 if verdict.threshold is None else verdict.threshold
        with self._lock:
            frames = list(self._frames)
        if not frames:
            return None
        if verdict.frames is None:
            _, image, _, _, _ = frames[0]
            if verdict.faces:
                marks = [Mark(f.box, f.fake_score, label_for(f.fake_score, threshold)) for f in verdict.faces]
            else:
                marks = [Mark((0, 0, image.width, image.height), verdict.fake_score, str(verdict.label))]
            heatmaps = verdict.explanation
            return annotate(overlay(image, heatmaps) if heatmaps else image, marks)
        tiles = [
            Tile(
                _thumbnail(image, self.thumb),
                t,
                p,
                NOT_APPLICABLE if p is None else label_for(p, threshold),
                [Mark(box, fp, label_for(fp, threshold)) for box, fp in faces],
                size,
            )
            for t, image, size, p, faces in sorted(frames, key=lambda item: item[0])
        ]
        return contact_sheet(tiles, thumb=self.thumb)


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    if max(image.size) <= side:
        return image
    small = image.copy()
    small.thumbnail((side, side))
    return small
