"""Videos through Judge: the same road as images, many inputs, one verdict with its timeline."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch

from dfscan.verdicts import VIDEO, Verdict, label_for
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.videos import hostile_corpus, make_clip
from worker.inference.images import ImagePolicy
from worker.inference.judge import Judge, judge_stream
from worker.inference.model import Detector, load_detector
from worker.inference.preprocess import to_tensor
from worker.inference.sources import SourcePolicy
from worker.inference.video import VideoPolicy, sample_frames

av.logging.set_level(av.logging.PANIC)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    return load_detector(
        str(save_tiny_vit(tmp_path_factory.mktemp("m") / "m", REAL_FAKE, seed=3, head_scale=10.0))
    )


def _judge(detector: Detector, root: Path, *, cache: float | None = None, **sources: int) -> Judge:
    return Judge(
        detector,
        sources=SourcePolicy(allowed_roots=(root,), **sources),  # type: ignore[arg-type]
        images=ImagePolicy(),
        videos=VideoPolicy(frames=16),
        batch_size=4,
        known=lambda sha, version: cache,
    )


def test_a_video_is_judged_frame_by_frame_into_one_verdict(detector: Detector, tmp_path: Path) -> None:
    data = make_clip(width=48, height=40, fps=10, seconds=4.0, gop=10, fake_spans=((1.0, 2.0),))
    path = tmp_path / "clip.bin"  # the name says nothing; the bytes say MP4
    path.write_bytes(data)
    judge = _judge(detector, tmp_path, cache=0.123, max_bytes=100, max_video_bytes=len(data))
    try:
        verdict = judge.judge(str(path))
    finally:
        judge.close()
    assert verdict.done, verdict.error
    assert (verdict.media, verdict.image_format, verdict.width, verdict.height) == (VIDEO, "MP4", 48, 40)
    assert verdict.duration_s == pytest.approx(4.0, abs=0.01)
    assert verdict.frames is not None and len(verdict.frames) == 16
    frames = list(sample_frames(data, VideoPolicy(frames=16)))
    expected = detector.predict(torch.stack([to_tensor(f.image, detector.preprocess) for f in frames]))
    assert [f.fake_score for f in verdict.frames] == pytest.approx(expected, abs=1e-5)
    assert [f.t for f in verdict.frames] == [f.t for f in frames]
    assert verdict.peak_t in [f.t for f in verdict.frames]
    assert verdict.fake_score is not None and verdict.label == label_for(verdict.fake_score, 0.5)
    assert verdict.cached is False  # the known() cache (0.123) was not used for a video
    assert judge.batcher.stats.items == 16
    out = verdict.output()
    assert out["media"] == "video" and len(out["frames"]) == 16
    assert set(out["frames"][0]) == {"t", "fake_score", "faces"}
    assert verdict.frame_rows() == [(f.t, f.fake_score) for f in verdict.frames]


def test_hostile_videos_are_failed_verdicts_and_images_still_pass(detector: Detector, tmp_path: Path) -> None:
    corpus = hostile_corpus()
    for name, (data, _) in corpus.items():
        (tmp_path / f"{name}.mp4").write_bytes(data)
    image = tmp_path / "ok.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    judge = _judge(detector, tmp_path)
    sources = [str(tmp_path / f"{name}.mp4") for name in corpus] + [str(image)]
    try:
        verdicts: list[Verdict] = list(judge_stream(judge, sources, threads=2))
    finally:
        judge.close()
    got = {Path(v.source).stem: v.error_code for v in verdicts}
    assert got == {**{name: code for name, (_, code) in corpus.items()}, "ok": None}
    assert all(not v.retryable for v in verdicts if not v.done)
    assert verdicts[-1].done and verdicts[-1].media == "image" and verdicts[-1].frames is None


def test_a_video_over_the_video_byte_cap_is_too_large(detector: Detector, tmp_path: Path) -> None:
    data = make_clip(seconds=1.0)
    (tmp_path / "c.mp4").write_bytes(data)
    judge = _judge(detector, tmp_path, max_bytes=100, max_video_bytes=len(data) - 1)
    try:
        verdict = judge.judge(str(tmp_path / "c.mp4"))
    finally:
        judge.close()
    assert verdict.error_code == "TOO_LARGE" and "for videos" in (verdict.error or "")
