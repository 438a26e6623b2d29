"""A video down the region road (:func:`~worker.inference.regions.score_clip`) through the shared batcher:
frames are model inputs of one job, bounded in flight, aggregated."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.videos import make_clip
from worker.inference.budget import Budget, Limits
from worker.inference.faces.crops import Face, FacePolicy, square_crop
from worker.inference.model.batcher import DynamicBatcher
from worker.inference.model.classifier import load_classifier
from worker.inference.model.preprocess import PreprocessConfig, to_tensor
from worker.inference.regions import ClipFrame, ClipScore, scale_box, score_clip
from worker.inference.video.aggregate import aggregate_frames
from worker.inference.video.decode import VideoPolicy, open_video, sample_frames


@dataclass(frozen=True)
class FrameFaces:
    """Frames judged on faces: ``find`` detects one frame's faces, ``policy`` chooses and crops them."""

    find: Callable[[Image.Image], list[Face]]
    policy: FacePolicy


@dataclass(frozen=True)
class VideoResult:
    clip: ClipScore
    duration_s: float

    def __getattr__(self, name: str) -> object:
        return getattr(self.clip, name)

    @property
    def infer_ms(self) -> float:
        return self.clip.wait_ms

    @property
    def decode_ms(self) -> float:
        return self.clip.total_ms - self.clip.wait_ms - self.clip.detect_ms


def score_video(
    data: bytes,
    policy: VideoPolicy,
    cfg: PreprocessConfig,
    submit: Callable[[torch.Tensor], Future[float]],
    *,
    max_in_flight: int | None = None,
    faces: FrameFaces | None = None,
) -> VideoResult:
    """A video's sampled frames down the region road, as the Judge sends them (no memo)."""
    with open_video(data, policy) as video:
        frames = (ClipFrame(f.t, f.size or f.image.size, f"clip@{f.t}", image=f.image) for f in video.frames)
        clip = score_clip(
            frames,
            cfg,
            lambda region: (submit(region.pixels), True),
            Budget(Limits()),
            faces=None if faces is None else faces.policy,
            find=None if faces is None else faces.find,
            max_in_flight=max_in_flight or policy.in_flight,
        )
        return VideoResult(clip, video.info.duration_s)


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
    assert fake.fake_score is not None and fake.peak_t is not None and noisy.fake_score is not None
    assert fake.fake_score > 0.8 and 3.0 <= fake.peak_t < 4.0
    assert fake.duration_s == pytest.approx(6.4, abs=0.01)
    assert [f.t for f in fake.frames] == sorted(f.t for f in fake.frames)
    assert max(f.fake_score or 0.0 for f in noisy.frames) > 0.8  # the noisy frame was sampled and scored high
    assert noisy.fake_score < 0.5
    assert batcher.stats.items == 64


def test_scores_match_the_detector_on_the_same_frames(checkpoint: Path, cfg: PreprocessConfig) -> None:
    detector = load_classifier(str(checkpoint), device="cpu")
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


# --- frames on faces -------------------------------------------------------------------------------


class _StubDetector:
    version = "stub-1"

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        raise AssertionError("the road asks its find, not the detector")


def _policy(mode: str, min_face_px: int = 8) -> FacePolicy:
    return FacePolicy(mode, _StubDetector(), margin=0.25, max_faces=8, min_face_px=min_face_px, min_score=0.0)


# In pixels of the 32x24 sampled frame (a 64x48 clip at frame_side 32): two faces to judge, one too small.
STUB_FACES = [Face((0, 0, 12, 12), 0.9), Face((16, 8, 10, 10), 0.8), Face((2, 2, 4, 4), 0.7)]


def test_frames_on_faces_crop_each_face_take_the_max_and_count_crops_in_flight(cfg: PreprocessConfig) -> None:
    outstanding, worst = 0, 0
    lock = threading.Lock()

    def slow_model(pixels: torch.Tensor) -> list[float]:
        time.sleep(0.005)
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

    seen: list[tuple[int, int]] = []

    def find(image: Image.Image) -> list[Face]:
        seen.append(image.size)
        time.sleep(0.002)
        return list(STUB_FACES)

    data = make_clip(width=64, height=48, fps=10, seconds=2.0, fake_spans=((0.5, 1.0),))
    policy = VideoPolicy(frames=8, frame_side=32)
    try:
        result = score_video(
            data, policy, cfg, submit, max_in_flight=3, faces=FrameFaces(find, _policy("auto"))
        )
    finally:
        batcher.close()
    assert seen == [(32, 24)] * 8  # detection ran on each sampled (reduced) frame
    assert batcher.stats.items == 16  # two crops a frame; the 4 px face was not judged
    assert 2 <= worst <= 3  # the cap counts model inputs (crops), not frames (3 frames would be 6)
    assert result.detect_ms >= 8 * 2 and result.on_faces
    frames = list(sample_frames(data, policy))
    for got, frame in zip(result.frames, frames, strict=True):
        assert [f.box for f in got.faces] == [(0, 0, 24, 24), (32, 16, 20, 20)]  # in the clip's 64x48 pixels
        assert [f.score for f in got.faces] == [0.9, 0.8]
        crops = torch.stack([to_tensor(square_crop(frame.image, f, 0.25), cfg) for f in STUB_FACES[:2]])
        assert [f.fake_score for f in got.faces] == pytest.approx(redness_model(crops), abs=1e-6)
        assert got.fake_score == max(f.fake_score for f in got.faces)
    expected = aggregate_frames([(f.t, f.fake_score) for f in result.frames])  # type: ignore[misc]
    assert (result.fake_score, result.peak_t) == (expected.fake_score, expected.peak_t)


def test_frames_without_a_face_are_judged_whole_in_auto_and_not_at_all_in_require(
    cfg: PreprocessConfig,
) -> None:
    data = make_clip(width=64, height=48, fps=10, seconds=2.0, fake_spans=((0.5, 1.0),))
    policy = VideoPolicy(frames=8, frame_side=32)
    frames = list(sample_frames(data, policy))
    faced = {frames[i].t for i in (0, 3, 4)}
    calls: list[Image.Image] = []

    def find(image: Image.Image) -> list[Face]:
        calls.append(image)
        return [STUB_FACES[0]] if frames[(len(calls) - 1) % 8].t in faced else []

    batcher = DynamicBatcher(redness_model, max_batch=4, max_wait=0.0)
    try:
        auto = score_video(data, policy, cfg, batcher.submit, faces=FrameFaces(find, _policy("auto")))
        require = score_video(data, policy, cfg, batcher.submit, faces=FrameFaces(find, _policy("require")))
        none = score_video(
            data, policy, cfg, batcher.submit, faces=FrameFaces(lambda im: [], _policy("require"))
        )
    finally:
        batcher.close()
    for got, frame in zip(auto.frames, frames, strict=True):
        if frame.t in faced:
            assert len(got.faces) == 1
        else:
            assert got.faces == [] and got.fake_score == pytest.approx(
                redness_model(to_tensor(frame.image, cfg).unsqueeze(0))[0], abs=1e-6
            )
    assert [f.fake_score is not None for f in require.frames] == [f.t in faced for f in frames]
    judged = [(f.t, f.fake_score) for f in require.frames if f.fake_score is not None]
    expected = aggregate_frames(judged)  # type: ignore[arg-type]
    assert (require.fake_score, require.peak_t) == (expected.fake_score, expected.peak_t)
    assert require.peak_t in faced
    assert none.fake_score is None and none.peak_t is None and not none.on_faces
    assert len(none.frames) == 8 and all(f.fake_score is None for f in none.frames)


def test_scale_box_maps_a_reduced_frame_box_to_the_decoded_size() -> None:
    assert scale_box((10, 5, 20, 30), (320, 180), (1920, 1080)) == (60, 30, 120, 180)
    assert scale_box((300, 170, 40, 40), (320, 180), (640, 360)) == (600, 340, 40, 20)  # kept inside
    assert scale_box((0, 0, 1, 1), (100, 100), (100, 100)) == (0, 0, 1, 1)
