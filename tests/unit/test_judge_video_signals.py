"""A clip (a video, an animated image) carries the same signals as a still image, on the same road: a
second model judges each sampled frame whole and its scores are gathered by the frames' own rule; the
heatmaps are those of the clip's most suspicious frame, stamped with its time."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from dfscan.verdicts import VIDEO, combine
from tests.fixtures.models import DEEPFAKE_REAL, REALISM_DEEPFAKE, save_tiny_vit
from tests.fixtures.videos import make_clip
from worker.inference.images.animation import animation_frames
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.model.explain import heatmap
from worker.inference.model.preprocess import to_tensor
from worker.inference.sources.read import SourcePolicy
from worker.inference.video.aggregate import aggregate_frames
from worker.inference.video.decode import VideoPolicy, sample_frames

av.logging.set_level(av.logging.PANIC)
VIDEOS = VideoPolicy(frames=8)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Classifier]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    first = save_tiny_vit(root / "first", DEEPFAKE_REAL, seed=2, head_scale=30.0)
    other = save_tiny_vit(
        root / "other", REALISM_DEEPFAKE, seed=5, image_size=48, patch_size=16, head_scale=3.0
    )
    return {"first": load_classifier(str(first)), "other": load_classifier(str(other))}


class Counting:
    """A classifier that counts the model inputs it is given (the rest is the wrapped one's)."""

    def __init__(self, inner: Classifier) -> None:
        self.inner = inner
        self.inputs = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def predict(self, pixels: torch.Tensor) -> list[float]:
        self.inputs += len(pixels)
        return self.inner.predict(pixels)


def _judge(first: Classifier, **kwargs: object) -> Judge:
    return Judge(first, sources=SourcePolicy(), images=ImagePolicy(), videos=VIDEOS, batch_size=4, **kwargs)  # type: ignore[arg-type]


def _clip() -> bytes:
    return make_clip(width=48, height=40, fps=10, seconds=2.0, gop=10, fake_spans=((0.8, 1.2),))


def _each(model: Classifier, images: list[Image.Image]) -> list[float]:
    return model.predict(torch.stack([to_tensor(image, model.preprocess) for image in images]))


def test_a_video_gets_a_second_opinion_from_each_frame(models: dict[str, Classifier]) -> None:
    data = _clip()
    second = Counting(models["other"])
    judge = _judge(models["first"], second=second, second_disagreement=0.3)
    plain = _judge(models["first"])
    try:
        verdict = judge.judge_bytes(data, source="clip.mp4")
        alone = plain.judge_bytes(data, source="clip.mp4")
    finally:
        judge.close()
        plain.close()
    assert verdict.done and verdict.media == VIDEO, verdict.error
    frames = list(sample_frames(data, VIDEOS))
    assert second.inputs == len(frames) == 8  # one whole frame each, through the one batcher
    per_frame = _each(models["other"], [f.image for f in frames])
    expected = aggregate_frames([(f.t, p) for f, p in zip(frames, per_frame, strict=True)]).fake_score
    assert verdict.second_opinion is not None
    assert verdict.second_opinion.fake_score == pytest.approx(expected, abs=1e-5)
    assert verdict.second_opinion == combine(
        verdict.fake_score,  # type: ignore[arg-type]
        verdict.second_opinion.fake_score,
        threshold=verdict.threshold,  # type: ignore[arg-type]
        max_disagreement=0.3,
        model_version=models["other"].version,
    )
    # the first model's score, label and timeline are its own; the version names both and the sampling
    assert verdict.fake_score == pytest.approx(alone.fake_score, abs=1e-6) and verdict.label == alone.label
    assert verdict.frames == alone.frames
    assert verdict.model_version == f"{judge.version}+video:frames=8:side=640"
    assert f"+second:{models['other'].version}:d=0.3+video:" in str(verdict.model_version)
    assert "+second:" not in str(alone.model_version)


def test_a_video_is_explained_on_its_most_suspicious_frame(models: dict[str, Classifier]) -> None:
    data = _clip()
    first = models["first"]
    # The duplicate cache would answer this clip; a request to explain is judged again.
    judge = _judge(first, explain=True, known=lambda sha, version: 0.5)
    try:
        verdict = judge.judge_bytes(data, source="clip.mp4")
    finally:
        judge.close()
    assert verdict.done and not verdict.cached, verdict.error
    assert verdict.frames is not None and verdict.explanation is not None
    scores = [f.fake_score for f in verdict.frames]
    peak = verdict.frames[scores.index(max(s for s in scores if s is not None))]  # type: ignore[type-var]
    (heat,) = verdict.explanation  # faces off: one region, the whole frame
    assert heat.box is None and heat.t == peak.t
    frame = next(f for f in sample_frames(data, VIDEOS) if f.t == peak.t)
    assert np.allclose(heat.grid, heatmap(first, to_tensor(frame.image, first.preprocess)), atol=1e-5)
    assert verdict.output()["explanation"][0]["t"] == peak.t


def test_an_animated_image_gets_both_signals(models: dict[str, Classifier]) -> None:
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(4)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=200, loop=0)
    data = buf.getvalue()
    second = Counting(models["other"])
    judge = _judge(models["first"], second=second, explain=True)
    try:
        verdict = judge.judge_bytes(data, source="a.gif")
    finally:
        judge.close()
    assert verdict.done and verdict.frames is not None, verdict.error
    other = models["other"]
    sampled = [  # scored while the animation is open (its frames are read lazily)
        (f.t, other.predict(to_tensor(f.image, other.preprocess).unsqueeze(0))[0])
        for f in animation_frames(data, ImagePolicy(), VIDEOS.frames, VIDEOS.frame_side)
    ]
    assert second.inputs == len(sampled) == 4
    expected = aggregate_frames(sampled).fake_score
    assert verdict.second_opinion is not None
    assert verdict.second_opinion.fake_score == pytest.approx(expected, abs=1e-5)
    assert verdict.explanation is not None and len(verdict.explanation) == 1
    assert verdict.explanation[0].t in [f.t for f in verdict.frames]
    assert "+second:" in str(verdict.model_version) and "+animation:" in str(verdict.model_version)


def test_a_second_model_is_within_the_jobs_budget(models: dict[str, Classifier], tmp_path: Path) -> None:
    """Each sampled frame costs one more model input: the allowance made from the policies admits it."""
    judge = _judge(models["first"], second=models["other"])
    try:
        assert judge.limits.model_inputs == 2 * max(VIDEOS.frames, VIDEOS.max_samples)
    finally:
        judge.close()
