"""Previews of what a job judged: bounded in count, side and weight, made from the pixels the judge decoded,
for a still image (one), a clip (at most 16 spread over it) and an animated image; off means none."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.videos import make_clip
from worker.inference.images.decode import ImagePolicy
from worker.inference.images.previews import (
    MAX_PREVIEW_BYTES,
    MAX_THUMBS,
    PREVIEW_SIDE,
    THUMB_SIDE,
    Thumbnails,
    preview_jpeg,
    spread,
)
from worker.inference.judge import Judge
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.sources.read import SourcePolicy
from worker.inference.video.decode import VideoPolicy


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return load_classifier(str(save_tiny_vit(tmp_path_factory.mktemp("m") / "m", REAL_FAKE, seed=3)))


def _size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG"
        return im.size


def _noise(width: int, height: int, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("n", "count", "expected"),
    [(0, 16, []), (3, 16, [0, 1, 2]), (16, 16, list(range(16))), (5, 1, [0]), (5, 0, []), (9, 3, [0, 4, 8])],
)
def test_spread_keeps_first_and_last_evenly(n: int, count: int, expected: list[int]) -> None:
    assert spread(list(range(n)), count) == expected


def test_spread_of_many_keeps_the_bound() -> None:
    picked = spread(list(range(256)))
    assert len(picked) == MAX_THUMBS and picked[0] == 0 and picked[-1] == 255 and picked == sorted(picked)


def test_a_preview_fits_its_side_keeps_the_aspect_and_never_enlarges() -> None:
    assert _size(preview_jpeg(_noise(1200, 600)) or b"") == (PREVIEW_SIDE, PREVIEW_SIDE // 2)
    assert _size(preview_jpeg(_noise(90, 300), THUMB_SIDE) or b"") == (48, THUMB_SIDE)
    assert _size(preview_jpeg(_noise(40, 30)) or b"") == (40, 30)
    assert _size(preview_jpeg(_noise(64, 64).convert("L")) or b"") == (64, 64)  # grey in, RGB JPEG out
    # Noise is the worst case for JPEG, and still far below the bound.
    assert len(preview_jpeg(_noise(2000, 2000)) or b"") < MAX_PREVIEW_BYTES
    with pytest.raises(ValueError):
        preview_jpeg(_noise(4, 4), 0)


def test_thumbnails_are_kept_in_time_order_and_off_makes_none() -> None:
    thumbs = Thumbnails()
    for t in (3.0, 1.0, 2.0):
        thumbs.add(t, _noise(400, 300))
    kept = thumbs.kept()
    assert [t for t, _ in kept] == [1.0, 2.0, 3.0]
    assert all(_size(jpeg) == (THUMB_SIDE, 120) for _, jpeg in kept)
    off = Thumbnails(enabled=False)
    off.add(0.0, _noise(10, 10))
    assert off.kept() == []


def _judge(detector: Classifier, root: Path, *, previews: bool = True, frames: int = 24) -> Judge:
    return Judge(
        detector,
        sources=SourcePolicy(allowed_roots=(root,), max_video_bytes=10_000_000),
        images=ImagePolicy(previews=previews),
        videos=VideoPolicy(frames=frames),
        batch_size=4,
    )


def test_the_judge_keeps_one_preview_of_an_image_and_bounded_thumbnails_of_a_clip(
    detector: Classifier, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    _noise(800, 600).save(photo)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_clip(width=64, height=48, fps=10, seconds=4.0))
    judge = _judge(detector, tmp_path)
    try:
        image = judge.judge(str(photo))
        video = judge.judge(str(clip))
    finally:
        judge.close()
    assert image.done and [p.t for p in image.previews] == [None]
    assert _size(image.previews[0].jpeg) == (PREVIEW_SIDE, 240)
    assert image.preview_rows() == [{"seq": 0, "t": None, "jpeg": image.previews[0].jpeg}]
    assert "previews" not in image.output()  # for the console only, never printed
    assert video.done and video.frames is not None and len(video.frames) == 24
    times = [p.t for p in video.previews]
    assert len(times) == MAX_THUMBS and times == sorted(times)
    assert set(times) <= {f.t for f in video.frames}
    assert times[0] == video.frames[0].t and times[-1] == video.frames[-1].t
    assert all(_size(p.jpeg) == (64, 48) for p in video.previews)  # small frames are not enlarged


def test_previews_off_keeps_none(detector: Classifier, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    _noise(100, 80).save(photo)
    judge = _judge(detector, tmp_path, previews=False)
    try:
        assert judge.judge(str(photo)).previews == ()
    finally:
        judge.close()
