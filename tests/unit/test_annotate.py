"""The moderators' picture: boxes in the verdict's colour, captioned with p(fake), on a copy."""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.inference.annotate import (
    CAPTION_H,
    COLOURS,
    PAD,
    Mark,
    Tile,
    annotate,
    caption,
    contact_sheet,
    sheet_size,
    tile_caption,
)

GREY = (100, 100, 100)


def colours_in(image: Image.Image, box: tuple[int, int, int, int]) -> set[tuple[int, int, int]]:
    left, top, right, bottom = box
    region = np.asarray(image)[top:bottom, left:right].reshape(-1, 3)
    return {tuple(int(v) for v in px) for px in np.unique(region, axis=0)}


def test_boxes_are_drawn_in_the_verdict_colour_on_a_copy() -> None:
    image = Image.new("RGB", (800, 600), GREY)
    marks = [Mark((100, 200, 150, 180), 0.93, "fake"), Mark((500, 250, 120, 140), 0.12, "real")]
    out = annotate(image, marks)
    assert out is not image and out.size == image.size
    assert set(np.unique(np.asarray(image).reshape(-1, 3), axis=0).ravel()) == {100}  # untouched
    px = out.load()
    assert px[100, 300] == COLOURS["fake"]  # left edge of the fake box
    assert px[249, 300] == COLOURS["fake"]  # right edge
    assert px[500, 330] == COLOURS["real"]
    assert px[175, 290] == GREY  # inside a box: the face itself stays visible
    assert px[400, 500] == GREY  # away from every box
    # each caption sits on a filled label above its box, with white text
    above_fake = colours_in(out, (100, 170, 200, 199))
    assert COLOURS["fake"] in above_fake and any(min(c) > 200 for c in above_fake)
    assert COLOURS["real"] in colours_in(out, (500, 220, 600, 249))


def test_captions_carry_the_label_and_p_fake() -> None:
    assert caption(Mark((0, 0, 1, 1), 0.934, "fake")) == "fake 0.93"
    assert caption(Mark((0, 0, 1, 1), 0.05, "real")) == "real 0.05"
    assert caption(Mark((0, 0, 1, 1), None, "not_applicable")) == "not_applicable"


def test_a_whole_image_verdict_frames_the_picture_and_its_label_goes_inside() -> None:
    image = Image.new("RGB", (300, 200), GREY)
    out = annotate(image, [Mark((0, 0, 300, 200), 0.7, "fake")])
    px = out.load()
    assert px[0, 100] == px[299, 100] == px[150, 199] == COLOURS["fake"]
    assert any(min(c) > 200 for c in colours_in(out, (0, 0, 150, 30)))  # white (anti-aliased) text


def test_boxes_outside_or_across_the_border_and_odd_images_do_not_fail() -> None:
    marks = [Mark((-50, -50, 120, 120), 0.9, "fake"), Mark((5000, 5000, 10, 10), 0.1, "real")]
    out = annotate(Image.new("RGB", (200, 100), GREY), marks)
    assert out.load()[0, 60] == COLOURS["fake"]
    thin = annotate(Image.new("RGB", (40000, 1), GREY), [Mark((10, 0, 30, 1), 0.2, "real")])
    assert thin.size == (40000, 1)
    rgba = annotate(Image.new("RGBA", (50, 50), (0, 0, 0, 0)), [Mark((5, 5, 20, 20), 0.5, "fake")])
    assert rgba.mode == "RGB"
    assert (
        annotate(Image.new("RGB", (10, 10), GREY), []).tobytes() == Image.new("RGB", (10, 10), GREY).tobytes()
    )


# --- contact sheets for videos ---------------------------------------------------------------------


def _tiles(n: int) -> list[Tile]:
    # Sampled frames of 320x180 from a 640x360 video: boxes are in the 640x360 pixels.
    labels = ["fake", "real", "not_applicable"]
    return [
        Tile(
            Image.new("RGB", (320, 180), GREY),
            t=0.5 * k,
            fake_score=None if labels[k % 3] == "not_applicable" else (0.9 if k % 3 == 0 else 0.1),
            label=labels[k % 3],
            marks=[Mark((320, 120, 160, 160), 0.9, "fake")] if k == 0 else [],
            size=(640, 360),
        )
        for k in range(n)
    ]


def test_a_contact_sheet_is_a_grid_of_frames_framed_and_captioned_by_verdict() -> None:
    sheet = contact_sheet(_tiles(6), columns=4, thumb=160)
    assert (
        sheet.size
        == sheet_size(6, columns=4, thumb=160)
        == (PAD + 4 * (160 + PAD), PAD + 2 * (160 + CAPTION_H + PAD))
    )
    left, top = PAD, PAD
    # Tile 0 (fake): its frame and caption strip are red; its face box, scaled by 160/640, is drawn red.
    assert sheet.getpixel((left, top + 80)) == COLOURS["fake"]
    assert COLOURS["fake"] in colours_in(sheet, (left, top + 160, left + 160, top + 160 + CAPTION_H))
    thumb_top = top + (160 - 90) // 2  # a 16:9 frame letterboxed in the square cell
    assert (
        sheet.getpixel((left + 80, thumb_top + 30 + 20)) == COLOURS["fake"]
    )  # left edge of the box x=80, y=30..70
    assert sheet.getpixel((left + 40, thumb_top + 45)) == GREY  # inside the frame, off the box
    # Tile 1 (real) is green, tile 2 (not judged) grey, and the second row starts with tile 4.
    second = left + 160 + PAD
    assert sheet.getpixel((second, top + 80)) == COLOURS["real"]
    assert sheet.getpixel((second + 160 + PAD, top + 80)) == COLOURS["not_applicable"]
    assert sheet.getpixel((left, top + 160 + CAPTION_H + PAD + 80)) == COLOURS["real"]  # tile 4: real
    assert (
        tile_caption(_tiles(2)[1]) == "0.50s real 0.10"
        and tile_caption(_tiles(3)[2]) == "1.00s not_applicable"
    )


def test_a_contact_sheet_with_fewer_tiles_than_columns_is_one_short_row() -> None:
    assert contact_sheet(_tiles(2), columns=4, thumb=64).size == (
        PAD + 2 * (64 + PAD),
        PAD + 64 + CAPTION_H + PAD,
    )
    try:
        contact_sheet([], columns=4)
    except ValueError as exc:
        assert "n >= 1" in str(exc)
    else:
        raise AssertionError("an empty sheet must be refused")
