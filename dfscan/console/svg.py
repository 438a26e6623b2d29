"""Server-rendered SVG for the console: face boxes over an image and a video's p(fake) timeline.

Pure string building (standard library only). Every number is formatted by us and every text is escaped, so
the markup can go into a page as is (Jinja's ``Markup``). Presentation attributes only, no ``style=``: the
console's Content-Security-Policy allows no inline styles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

FAKE_COLOUR = "#d7263d"
REAL_COLOUR = "#1b998b"


@dataclass(frozen=True)
class Box:
    """One face: ``(x, y, w, h)`` in pixels of the judged (EXIF-oriented) image and its p(fake)."""

    x: int
    y: int
    w: int
    h: int
    fake_score: float


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


@dataclass(frozen=True)
class Heat:
    """One explanation heatmap: ``grid`` rows of cells in [0, 1] over ``box`` ``(x, y, w, h)`` in image
    pixels (None: the whole image)."""

    box: tuple[int, int, int, int] | None
    grid: Sequence[Sequence[float]]


def _heat_cells(index: int, heat: Heat, width: int, height: int) -> str:
    x0, y0, w, h = heat.box if heat.box is not None else (0, 0, width, height)
    rows = len(heat.grid)
    parts = [f'<g class="heatmap" data-region="{index}">']
    for r, row in enumerate(heat.grid):
        cols = len(row)
        for c, value in enumerate(row):
            strength = min(1.0, max(0.0, float(value)))
            if strength < 0.05:  # invisible anyway: fewer nodes
                continue
            parts.append(
                f'<rect class="heat" x="{_num(x0 + w * c / cols)}" y="{_num(y0 + h * r / rows)}" '
                f'width="{_num(w / cols)}" height="{_num(h / rows)}" fill="{FAKE_COLOUR}" '
                f'fill-opacity="{_num(0.6 * strength)}"/>'
            )
    parts.append("</g>")
    return "".join(parts)


def face_boxes(
    width: int, height: int, boxes: Sequence[Box], threshold: float, heats: Sequence[Heat] = ()
) -> str:
    """An ``<svg>`` the size of the image (viewBox in image pixels, so it scales with the ``<img>``) with one
    ``<rect data-face-index=i>`` per face, in the order stored, and its p(fake) as a label; under them, each
    explanation heatmap as a ``<g class="heatmap">`` of translucent cells over its region."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    stroke = max(2.0, min(width, height) / 200)
    font = max(12.0, min(width, height) / 30)
    parts = [
        f'<svg class="faces" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="xMidYMid meet" role="img" aria-label="{len(boxes)} faces">'
    ]
    parts.extend(_heat_cells(i, heat, width, height) for i, heat in enumerate(heats) if heat.grid)
    for index, box in enumerate(boxes):
        colour = FAKE_COLOUR if box.fake_score >= threshold else REAL_COLOUR
        label = f"face {index + 1}: p(fake) {box.fake_score:.2f}"
        label_y = box.y - stroke if box.y - font > 0 else box.y + box.h + font
        parts.append(
            f'<g class="face"><rect data-face-index="{index}" x="{box.x}" y="{box.y}" width="{box.w}" '
            f'height="{box.h}" fill="none" stroke="{colour}" stroke-width="{_num(stroke)}">'
            f"<title>{escape(label)}</title></rect>"
            f'<text x="{box.x}" y="{_num(label_y)}" font-size="{_num(font)}" fill="{colour}" '
            f'stroke="#000" stroke-width="{_num(font / 16)}" paint-order="stroke">'
            f"{escape(f'{box.fake_score:.2f}')}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Point:
    t: float
    fake_score: float


@dataclass(frozen=True)
class Thumb:
    """A sampled frame's thumbnail at ``t`` seconds, served at ``href`` (a path of this origin)."""

    t: float
    href: str


def timeline(
    points: Sequence[Point],
    threshold: float,
    *,
    duration_s: float | None = None,
    width: int = 640,
    height: int = 180,
    thumbs: Sequence[Thumb] = (),
    aspect: float = 0.75,
) -> str:
    """A chart of p(fake) per sampled frame over time: the line, the threshold dashed, the peak marked by a
    ``<circle class="peak" data-t=...>`` (the first of equal highest scores). Empty points -> a chart saying so.
    ``thumbs``: the frames' thumbnails in a row under the chart, each ``<image class="frame-thumb"
    data-t=...>`` centred under its time (kept inside the plot), ``aspect`` (height / width) of the video.
    """
    left, right, top, bottom = 40, 10, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    end = max([duration_s or 0.0, *(p.t for p in points), *(th.t for th in thumbs)]) or 1.0
    thumb_w = min(80.0, plot_w / max(1, len(thumbs)))
    thumb_h = thumb_w * min(4.0, max(0.1, aspect))
    chart_h = height
    if thumbs:
        height = int(chart_h + thumb_h + 8)

    def x(t: float) -> float:
        return left + plot_w * (t / end)

    def y(score: float) -> float:
        return top + plot_h * (1.0 - min(1.0, max(0.0, score)))

    parts = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="p(fake) per frame over time">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#999"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{left - 4}" y="{_num(y(tick) + 4)}" font-size="11" text-anchor="end">{tick:g}</text>'
        )
    parts.append(
        f'<text x="{left}" y="{chart_h - 8}" font-size="11">0 s</text>'
        f'<text x="{width - right}" y="{chart_h - 8}" font-size="11" text-anchor="end">{_num(end)} s</text>'
    )
    for thumb in sorted(thumbs, key=lambda th: th.t):
        at = min(max(x(thumb.t) - thumb_w / 2, left), width - right - thumb_w)
        parts.append(
            f'<image class="frame-thumb" data-t="{_num(thumb.t)}" href="{escape(thumb.href)}" '
            f'x="{_num(at)}" y="{chart_h + 4}" width="{_num(thumb_w)}" height="{_num(thumb_h)}" '
            f'preserveAspectRatio="xMidYMid meet"><title>{escape(f"t={thumb.t:.2f} s")}</title></image>'
        )
    parts.append(
        f'<line class="threshold" x1="{left}" x2="{width - right}" y1="{_num(y(threshold))}" '
        f'y2="{_num(y(threshold))}" stroke="{FAKE_COLOUR}" stroke-dasharray="6 4"/>'
    )
    if not points:
        parts.append(f'<text x="{width / 2}" y="{chart_h / 2}" text-anchor="middle">no frames judged</text>')
    else:
        ordered = sorted(points, key=lambda p: p.t)
        line = " ".join(f"{_num(x(p.t))},{_num(y(p.fake_score))}" for p in ordered)
        parts.append(f'<polyline points="{line}" fill="none" stroke="#264653" stroke-width="2"/>')
        for p in ordered:
            parts.append(
                f'<circle class="frame" cx="{_num(x(p.t))}" cy="{_num(y(p.fake_score))}" r="3" fill="#264653">'
                f"<title>{escape(f't={p.t:.2f} s p(fake) {p.fake_score:.2f}')}</title></circle>"
            )
        peak = max(ordered, key=lambda p: p.fake_score)  # max keeps the first of equals
        parts.append(
            f'<circle class="peak" data-t="{_num(peak.t)}" cx="{_num(x(peak.t))}" '
            f'cy="{_num(y(peak.fake_score))}" r="7" fill="none" stroke="{FAKE_COLOUR}" stroke-width="3">'
            f"<title>{escape(f'peak: t={peak.t:.2f} s p(fake) {peak.fake_score:.2f}')}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)
