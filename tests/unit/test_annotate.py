"""The moderators' picture: boxes in the verdict's colour, captioned with p(fake), on a copy."""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.inference.annotate import COLOURS, Mark, annotate, caption

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
