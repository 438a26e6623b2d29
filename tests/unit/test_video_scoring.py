"""A video through the shared batcher: frames are model inputs of one job, bounded in flight, aggregated."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.videos import make_clip
from worker.inference.batcher import DynamicBatcher
from worker.inference.model import load_detector
from worker.inference.preprocess import PreprocessConfig, to_tensor
from worker.inference.video import VideoPolicy, sample_frames
from worker.inference.video_scoring import score_video

IMAGE_MARK = -7.0  # an 'image' tensor in the fairness test is filled with this value


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("vit"), REAL_FAKE)


@pytest.fixture(scope="module")
def cfg(checkpoint: Path) -> PreprocessConfig:
    return PreprocessConfig.from_pretrained(str(checkpoint))


def redness_model(pixels: torch.Tensor) -> list[float]:
    """p(fake) = mean red in [0, 1], read back through the processor's mean/std of 0.5."""
    return [float(v) for v in (pixels[:, 0].mean(dim=(1, 2)) * 0.5 + 0.5).clamp(0, 1)]


def test_a_fake_stretch_is_flagged_and_one_noisy_frame_is_not_through_the_batcher(
    cfg: PreprocessConfig,
) -> None:
    batcher = DynamicBatcher(redness_model, max_batch=8, max_wait=0.005)
    try:
        policy = VideoPolicy(frames=32)
        fake = score_video(
            make_clip(width=32, height=32, fps=10, seconds=6.4, gop=20, fake_spans=((3.0, 4.0),)),
            policy,
            cfg,
            batcher.submit,
        )
        noisy = score_video(
            make_clip(width=32, height=32, fps=10, seconds=6.4, gop=20, noisy_frames=(37,)),
            policy,
            cfg,
            batcher.submit,
        )
    finally:
        batcher.close()
    assert len(fake.frames) == len(noisy.frames) == 32
    assert fake.fake_score > 0.8 and 3.0 <= fake.peak_t < 4.0
    assert fake.duration_s == pytest.approx(6.4, abs=0.01)
    assert [f.t for f in fake.frames] == sorted(f.t for f in fake.frames)
    assert max(f.fake_score for f in noisy.frames) > 0.8  # the noisy frame was sampled and scored high
    assert noisy.fake_score < 0.5
    assert batcher.stats.items == 64


def test_scores_match_the_detector_on_the_same_frames(checkpoint: Path, cfg: PreprocessConfig) -> None:
    detector = load_detector(str(checkpoint), device="cpu")
    data = make_clip(width=48, height=40, fps=10, seconds=4.0, gop=10, fake_spans=((1.0, 2.0),))
    batcher = DynamicBatcher(detector.predict, max_batch=4, max_wait=0.005)
    try:
        result = score_video(data, VideoPolicy(frames=16), cfg, batcher.submit)
    finally:
        batcher.close()
    frames = list(sample_frames(data, VideoPolicy(frames=16)))
    expected = detector.predict(torch.stack([to_tensor(f.image, cfg) for f in frames]))
    assert [f.t for f in result.frames] == [f.t for f in frames]
    assert [f.fake_score for f in result.frames] == pytest.approx(expected, abs=1e-5)
    assert result.infer_ms >= 0 and result.decode_ms > 0


def test_a_video_never_has_more_than_max_in_flight_frames_in_the_batcher(cfg: PreprocessConfig) -> None:
    outstanding, worst = 0, 0
    lock = threading.Lock()

    def slow_model(pixels: torch.Tensor) -> list[float]:
        time.sleep(0.01)
        return redness_model(pixels)

    batcher = DynamicBatcher(slow_model, max_batch=2, max_wait=0.0)

    def submit(tensor: torch.Tensor) -> Future[float]:
        nonlocal outstanding, worst
        future = batcher.submit(tensor)
        with lock:
            outstanding += 1
            worst = max(worst, outstanding)

        def done(_: Future[float]) -> None:
            nonlocal outstanding
            with lock:
                outstanding -= 1

        future.add_done_callback(done)
        return future

    try:
        result = score_video(
            make_clip(width=32, height=32, seconds=4.0), VideoPolicy(frames=32), cfg, submit, max_in_flight=3
        )
    finally:
        batcher.close()
    assert len(result.frames) == 32
    assert worst <= 3


def test_an_image_queued_behind_a_video_waits_for_at_most_its_in_flight_frames(cfg: PreprocessConfig) -> None:
    """The model sees what is waiting in order; a video keeps at most 4 frames waiting, so an image
    submitted while the video is being judged runs within the next two batches of 4, not after 32 frames."""
    seen: list[str] = []
    started = threading.Event()

    def model(pixels: torch.Tensor) -> list[float]:
        started.set()
        time.sleep(0.02)
        seen.extend("image" if float(p.flatten()[0]) == IMAGE_MARK else "frame" for p in pixels)
        return [0.5] * len(pixels)

    batcher = DynamicBatcher(model, max_batch=4, max_wait=0.0)
    video = make_clip(width=32, height=32, seconds=4.0)
    thread = threading.Thread(
        target=score_video,
        args=(video, VideoPolicy(frames=32), cfg, batcher.submit),
        kwargs={"max_in_flight": 4},
    )
    thread.start()
    try:
        assert started.wait(10)
        time.sleep(0.05)
        image = batcher.submit(torch.full((3, 32, 32), IMAGE_MARK))
        frames_before = seen.count("frame")
        image.result(timeout=10)
        thread.join(10)
    finally:
        batcher.close()
    position = seen.index("image")
    assert seen.count("frame") == 32
    assert position - frames_before <= 8, (frames_before, position)
    assert seen[-1] == "frame"  # the video was still being judged when the image went through
