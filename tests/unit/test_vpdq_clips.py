"""vPDQ through the road: a cut of a known clip, re-encoded and scaled, matches it by frame share; an
unrelated clip does not; a matching clip is answered before any model input (docs/near-duplicates.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfscan.verdicts import Stored
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.transforms import photos
from tests.fixtures.videos import encode_images
from worker.inference.hashing.pdq import MediaHash, Near, Pdq, frame_share
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.sources.read import SourcePolicy


def _scenes(names: list[str], size: tuple[int, int], per_scene: int = 8) -> list[Image.Image]:
    """A clip of still scenes (real photos), each held ``per_scene`` frames with a slow zoom."""
    by_name = dict(photos())
    frames = []
    for name in names:
        photo = by_name[name].resize(size)
        for i in range(per_scene):
            dx, dy = i * size[0] // 200, i * size[1] // 200
            frames.append(photo.crop((dx, dy, size[0] - dx, size[1] - dy)).resize(size))
    return frames


def _hashes(judge: Judge, path: Path) -> tuple[Pdq, ...]:
    verdict = judge.judge(str(path))
    assert verdict.done and verdict.media == "video", verdict
    return tuple(Pdq(bytes.fromhex(h.pdq), h.quality, h.t) for h in verdict.hashes)


def test_a_cut_of_a_known_clip_reencoded_and_scaled_matches_it(tmp_path: Path) -> None:
    known = _scenes(["astronaut", "chelsea", "coffee", "rocket", "camera"], (320, 240))
    cut = [frame.resize((240, 180)) for frame in known[12:30]]  # frames 12-29, three scenes
    other = _scenes(["coins", "moon", "hubble_deep_field", "immunohistochemistry", "retina"], (320, 240))
    (tmp_path / "known.mp4").write_bytes(encode_images(known))
    (tmp_path / "cut.mp4").write_bytes(encode_images(cut, gop=3))
    (tmp_path / "other.mp4").write_bytes(encode_images(other))
    model = load_classifier(str(save_tiny_vit(tmp_path / "m", REAL_FAKE)))
    judge = Judge(model, sources=SourcePolicy(allowed_roots=(tmp_path,)), images=ImagePolicy())
    try:
        known_h, cut_h, other_h = (
            _hashes(judge, tmp_path / n) for n in ("known.mp4", "cut.mp4", "other.mp4")
        )
    finally:
        judge.close()
    assert len(known_h) == 32 and np.all([h.t >= 0 for h in known_h])
    share = frame_share(cut_h, known_h, 31, 50)
    assert share.query_percent >= 80.0, share  # every frame of the cut is in the known clip
    assert 0 < share.compared_percent < 100  # the cut holds part of it
    assert frame_share(other_h, known_h, 31, 50).query_percent < 80.0


class _Counting:
    """The classifier, counting the model inputs it is given."""

    def __init__(self, inner: Classifier) -> None:
        self._inner = inner
        self.inputs = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def predict(self, pixels: torch.Tensor) -> list[float]:
        self.inputs += len(pixels)
        return self._inner.predict(pixels)


def test_a_cut_of_a_judged_clip_is_answered_from_its_verdict_without_a_model_input(tmp_path: Path) -> None:
    known = _scenes(["astronaut", "chelsea", "coffee", "rocket", "camera"], (320, 240))
    cut = [frame.resize((240, 180)) for frame in known[12:30]]
    other = _scenes(["coins", "moon", "hubble_deep_field", "immunohistochemistry", "retina"], (320, 240))
    data = {"known": encode_images(known), "cut": encode_images(cut, gop=3), "other": encode_images(other)}
    model = _Counting(load_classifier(str(save_tiny_vit(tmp_path / "m", REAL_FAKE))))
    seen: dict[str, tuple[tuple[Pdq, ...], Stored]] = {}
    looked: list[int] = []

    def similar(hashed: MediaHash, version: str) -> Near | None:
        looked.append(model.inputs)  # how many inputs the model had been given at the look-up
        for name, (frames, stored) in seen.items():
            if frame_share(hashed.frames, frames, 31, 50).query_percent >= 80.0:
                return Near(of=name, distance=0, stored=stored)
        return None

    judge = Judge(model, sources=SourcePolicy(), images=ImagePolicy(), similar=similar)  # type: ignore[arg-type]
    try:
        first = judge.judge_bytes(data["known"], source="known")
        assert first.done and first.fake_score is not None and first.near_duplicate_of is None, first
        assert looked == [0] and model.inputs == 32  # looked up before the first input, then judged
        seen["known"] = (
            tuple(Pdq(bytes.fromhex(h.pdq), h.quality, h.t) for h in first.hashes),
            Stored(first.fake_score, media="video"),
        )
        budget = judge.new_budget()
        again = judge.judge_bytes(data["cut"], source="cut", budget=budget)
        assert model.inputs == 32, "the near-duplicate clip spent model inputs"
        assert again.done and again.near_duplicate_of == "known" and again.cached is False, again
        assert (again.fake_score, again.label) == (first.fake_score, first.label)
        assert again.media == "video" and again.duration_s is not None and len(again.hashes) == 18
        assert budget.held == 0  # the frames held for the look-up were let go
        unrelated = judge.judge_bytes(data["other"], source="other")
        assert unrelated.near_duplicate_of is None and model.inputs == 64
    finally:
        judge.close()
