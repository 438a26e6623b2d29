"""The road's edges: animated images are clips sampled like a video, and one budget per job bounds every
stage (seconds spent working, never waiting; pixel bytes held, counted in the process's decode memory;
model and detector inputs), failing with BUDGET_EXCEEDED naming the stage and the limit."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from dfscan.exceptions import BudgetExceededError
from dfscan.verdicts import FACES, IMAGE
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.videos import make_clip
from worker.inference.budget import Budget, Limits
from worker.inference.faces.crops import Face, FacePolicy
from worker.inference.images.animation import frame_count, sample_indices
from worker.inference.images.decode import ImagePolicy, _budget
from worker.inference.judge import Judge
from worker.inference.model.preprocess import PreprocessConfig
from worker.inference.sources.read import SourcePolicy
from worker.inference.video.decode import VideoPolicy

RED, GREY = (240, 10, 10), (90, 90, 90)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> PreprocessConfig:
    return PreprocessConfig.from_pretrained(str(save_tiny_vit(tmp_path_factory.mktemp("vit"), REAL_FAKE)))


class Redness:
    """A 'model' whose p(fake) is the mean red of its input: a red frame is fake. ``on_predict`` runs
    before every batch (a test moves its clock there)."""

    version = "redness-1"
    device = torch.device("cpu")

    def __init__(self, cfg: PreprocessConfig, on_predict: Callable[[], None] = lambda: None) -> None:
        self.preprocess = cfg
        self.on_predict = on_predict
        self.inputs = 0

    def predict(self, pixels: torch.Tensor) -> list[float]:
        self.on_predict()
        self.inputs += len(pixels)
        return [float(v) for v in (pixels[:, 0].mean(dim=(1, 2)) * 0.5 + 0.5).clamp(0, 1)]


class BoxFinder:
    """A face detector that 'finds' one face where a frame is red, and records what the process's
    decode memory budget held while it looked."""

    version = "box-1"

    def __init__(self, memory: ImagePolicy | None = None) -> None:
        self.memory = memory
        self.held_while_detecting: list[int] = []
        self.lock = threading.Lock()

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        if self.memory is not None:
            with self.lock:
                self.held_while_detecting.append(_budget(self.memory.decode_memory).used)
        out = []
        for image in images:
            red = image.getpixel((image.width // 2, image.height // 2))[0] > 200  # type: ignore[index]
            w, h = image.size
            out.append([Face((w // 4, h // 4, w // 2, h // 2), 0.99)] if red else [])
        return out


def _judge(detector: Redness, *, faces: FacePolicy | None = None, **kwargs) -> Judge:  # type: ignore[no-untyped-def]
    return Judge(
        detector,  # type: ignore[arg-type]
        sources=SourcePolicy(),
        images=kwargs.pop("images", ImagePolicy()),
        videos=kwargs.pop("videos", VideoPolicy(frames=8)),
        faces=faces,
        batch_size=4,
        **kwargs,
    )


def _animation(fmt: str, colours: list[tuple[int, int, int]], size: tuple[int, int] = (96, 64)) -> bytes:
    # Each frame a little different: encoders merge identical consecutive frames.
    frames = [Image.new("RGB", size, (r, g, (b + 3 * i) % 256)) for i, (r, g, b) in enumerate(colours)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _formats() -> list[str]:
    out = []
    for fmt in ("GIF", "PNG", "WEBP", "AVIF"):
        try:
            if frame_count(_animation(fmt, [GREY, RED]), ImagePolicy()) == 2:
                out.append(fmt)
        except Exception:  # this Pillow cannot write the format animated
            continue
    return out


ANIMATED_FORMATS = _formats()


# --- animated images ------------------------------------------------------------------------------


def test_gif_apng_and_webp_animations_can_be_generated_here() -> None:
    assert {"GIF", "PNG", "WEBP"} <= set(ANIMATED_FORMATS)


@pytest.mark.parametrize("fmt", ANIMATED_FORMATS)
def test_a_fake_second_frame_of_an_animation_is_seen(cfg: PreprocessConfig, fmt: str) -> None:
    data = _animation(fmt, [GREY, RED])
    judge = _judge(Redness(cfg))
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    assert verdict.done, verdict.error
    assert verdict.media == IMAGE and verdict.image_format == fmt and verdict.frames is not None
    assert verdict.duration_s is None and verdict.peak_t is None  # an image has no stored timeline
    assert [f.t for f in verdict.frames] == [0.0, 0.1]
    first, second = (f.fake_score for f in verdict.frames)
    assert first is not None and second is not None
    assert first < 0.5 < second, "frame 2 (red) is judged, not only frame 1"
    assert verdict.model_version == judge.animation_version != judge.version


def test_a_fake_stretch_inside_a_long_animation_flags_it_and_only_the_sample_is_judged(
    cfg: PreprocessConfig,
) -> None:
    colours = [RED if 30 <= i < 80 else GREY for i in range(100)]
    data = _animation("GIF", colours, size=(32, 24))
    model = Redness(cfg)
    judge = _judge(model, videos=VideoPolicy(frames=8))
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    assert verdict.done, verdict.error
    assert verdict.frames is not None and len(verdict.frames) == 8 == model.inputs
    assert [round(f.t * 10) for f in verdict.frames] == sample_indices(100, 8)
    assert verdict.label == "fake" and verdict.fake_score is not None and verdict.fake_score > 0.8


def test_an_animation_is_judged_on_the_faces_of_each_frame(cfg: PreprocessConfig) -> None:
    finder = BoxFinder()
    judge = _judge(Redness(cfg), faces=FacePolicy("require", finder, margin=0.0, max_faces=4, min_face_px=4))
    try:
        verdict = judge.judge_bytes(_animation("GIF", [GREY, RED, GREY]))
    finally:
        judge.close()
    assert verdict.done and verdict.judged_on == FACES and verdict.frames is not None
    assert [f.fake_score is not None for f in verdict.frames] == [False, True, False]
    assert verdict.frames[1].faces[0].box == (24, 16, 48, 32)  # in the animation's own pixels


def test_a_still_image_is_one_frame_and_keeps_its_version(cfg: PreprocessConfig) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), RED).save(buf, "GIF")
    judge = _judge(Redness(cfg))
    try:
        verdict = judge.judge_bytes(buf.getvalue())
    finally:
        judge.close()
    assert verdict.done and verdict.frames is None and verdict.model_version == judge.version
    assert verdict.media == IMAGE


def test_sample_indices_spread_evenly_and_keep_both_ends() -> None:
    assert sample_indices(3, 8) == [0, 1, 2]
    assert sample_indices(100, 8) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert sample_indices(100, 1) == [0]


# --- the budget -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_waiting_never_counts_and_working_does() -> None:
    clock, cpu = FakeClock(), FakeClock()
    budget = Budget(Limits(seconds=10.0), clock=clock, cpu=cpu)
    with budget.waiting():
        clock.now += 1000.0
        with budget.waiting():  # nested waits stop the clock once
            clock.now += 5.0
    budget.check()
    assert budget.worked() == 0.0
    clock.now += 11.0
    cpu.now += 11.0
    with pytest.raises(BudgetExceededError) as raised:
        budget.enter("decode")
    assert (raised.value.code, raised.value.stage, raised.value.limit) == (
        "BUDGET_EXCEEDED",
        "fetch",
        "seconds=10",
    )
    assert raised.value.permanent


def test_seconds_spent_on_a_busy_worker_are_retried_not_failed_for_good() -> None:
    clock, cpu = FakeClock(), FakeClock()
    budget = Budget(Limits(seconds=10.0), clock=clock, cpu=cpu)
    budget.enter("video decode")
    clock.now += 30.0
    cpu.now += 2.0  # the thread ran 2 s of the 30: the worker was busy
    with pytest.raises(BudgetExceededError) as raised:
        budget.check()
    assert not raised.value.permanent and "busy" in raised.value.message
    assert raised.value.stage == "video decode"


class BudgetJudge(Judge):
    """A Judge whose jobs run on a fake clock."""

    clock: FakeClock
    budget: Budget | None = None

    def new_budget(self) -> Budget:
        self.budget = Budget(self.limits, memory=self.images, clock=self.clock, cpu=self.clock)
        return self.budget


def test_a_video_waiting_for_a_busy_model_is_not_failed_by_its_deadline(cfg: PreprocessConfig) -> None:
    clock = FakeClock()
    judge: BudgetJudge

    def busy() -> None:
        """Every batch takes 'an hour' of the job's wall clock, while the job waits for it."""
        for _ in range(6000):  # a generous ceiling: 60 s
            if judge.budget is not None and judge.budget.is_waiting:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the job never waited for the model")
        clock.now += 3600.0

    data = make_clip(width=64, height=48, fps=10, seconds=2.0, gop=10)
    judge = BudgetJudge(
        Redness(cfg, busy),  # type: ignore[arg-type]
        sources=SourcePolicy(),
        images=ImagePolicy(),
        videos=VideoPolicy(frames=8),
        limits=Limits(seconds=60.0),
    )
    judge.clock = clock
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    assert clock.now >= 8 * 3600.0, verdict
    assert verdict.done, verdict.error
    assert verdict.frames is not None and len(verdict.frames) == 8


def test_a_video_whose_decoding_runs_out_fails_with_the_budget_code_naming_the_stage(
    cfg: PreprocessConfig,
) -> None:
    clock = FakeClock()

    class Ticking(FakeClock):
        def __call__(self) -> float:  # every look at the clock costs 'a second' of work
            clock.now += 1.0
            return clock.now

    data = make_clip(width=64, height=48, fps=10, seconds=2.0, gop=10)
    judge = BudgetJudge(
        Redness(cfg),  # type: ignore[arg-type]
        sources=SourcePolicy(),
        images=ImagePolicy(),
        videos=VideoPolicy(frames=8),
        limits=Limits(seconds=5.0),
    )
    judge.clock = Ticking()
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    assert (verdict.status, verdict.error_code, verdict.retryable) == ("failed", "BUDGET_EXCEEDED", False)
    assert "over its limit of 5 s" in (verdict.error or "")


def test_model_inputs_over_the_budget_fail_the_job_with_one_code(cfg: PreprocessConfig) -> None:
    data = make_clip(width=64, height=48, fps=10, seconds=2.0, gop=10)
    model = Redness(cfg)
    judge = _judge(model, limits=Limits(model_inputs=3))
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    assert (verdict.error_code, verdict.retryable) == ("BUDGET_EXCEEDED", False)
    assert "4 model inputs, over its limit of 3" in (verdict.error or "")
    assert model.inputs <= 3


def test_detector_inputs_are_drawn_from_the_budget(cfg: PreprocessConfig) -> None:
    finder = BoxFinder()
    policy = FacePolicy("auto", finder, margin=0.0, max_faces=4, min_face_px=4)
    judge = _judge(Redness(cfg), faces=policy, limits=Limits(detector_inputs=2))
    try:
        verdict = judge.judge_bytes(_animation("GIF", [GREY, RED, GREY, RED]))
    finally:
        judge.close()
    assert verdict.error_code == "BUDGET_EXCEEDED"
    assert "in face detection: 3 face-detector inputs, over its limit of 2" in (verdict.error or "")


def test_the_full_size_image_counts_against_decode_memory_while_its_faces_are_found(
    cfg: PreprocessConfig, tmp_path: Path
) -> None:
    images = ImagePolicy(decode_memory=64 * 1024 * 1024 + 7)  # its own process budget in this test
    finder = BoxFinder(images)
    buf = io.BytesIO()
    Image.new("RGB", (800, 600), RED).save(buf, "PNG")
    judge = _judge(
        Redness(cfg),
        images=images,
        faces=FacePolicy("auto", finder, margin=0.0, max_faces=4, min_face_px=4),
    )
    try:
        verdict = judge.judge_bytes(buf.getvalue())
    finally:
        judge.close()
    assert verdict.done and verdict.judged_on == FACES
    assert finder.held_while_detecting == [
        800 * 600 * 4 + 600 * 8
    ]  # pixels and row pointers, held while the detector looked
    assert _budget(images.decode_memory).used == 0  # and released once the crops were made


def test_pixels_held_over_the_job_budget_fail_with_the_stage_named(cfg: PreprocessConfig) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (800, 600), RED).save(buf, "PNG")
    judge = _judge(
        Redness(cfg),
        faces=FacePolicy("auto", BoxFinder(), margin=0.0, max_faces=4, min_face_px=4),
        limits=Limits(pixel_bytes=1024 * 1024),
    )
    try:
        verdict = judge.judge_bytes(buf.getvalue())
    finally:
        judge.close()
    assert verdict.error_code == "BUDGET_EXCEEDED"
    assert "in face crops: holding 1 MiB of decoded pixels, over its limit of 1 MiB" in (verdict.error or "")


# --- dfscan evaluate: the serving road, built by the factory from the settings ---------------------


def test_evaluate_judges_under_the_serving_settings(tmp_path: Path) -> None:
    from dfscan.settings import Settings
    from worker.training.data import Example
    from worker.training.evaluate import score_examples

    model = str(save_tiny_vit(tmp_path / "m", REAL_FAKE))
    small, large = (_bytes_of(Image.new("RGB", size, GREY)) for size in ((64, 48), (400, 300)))
    examples = [Example("small", 0, lambda: small), Example("large", 1, lambda: large)]
    settings = Settings(max_pixels=100 * 100, device="cpu", threads=1)
    labels, scores, skipped, version = score_examples(model, examples, settings=settings)
    assert (labels, skipped) == ([0], ["large"])  # DFSCAN_MAX_PIXELS applied, as serving applies it
    _, _, skipped, _ = score_examples(model, examples, settings=Settings(device="cpu", threads=1))
    assert skipped == []


def _bytes_of(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
def test_frames_are_counted_from_the_header_and_a_still_image_has_one(fmt: str) -> None:
    seven = _animation(fmt, [GREY, RED] * 3 + [GREY], size=(20, 10))
    assert frame_count(_bytes_of(Image.new("RGB", (20, 10), GREY), fmt), ImagePolicy()) == 1
    assert frame_count(seven, ImagePolicy()) == 7
    # over the frame cap, or truncated: one frame, and the bounded decode of frame 1 reports the problem
    assert frame_count(seven, ImagePolicy(max_frames=5)) == 1
    assert frame_count(seven[:40], ImagePolicy()) == 1


def test_evaluate_runs_no_second_model_and_no_heatmaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A threshold is measured on the first model's score only: with DFSCAN_SECOND_MODEL and
    DFSCAN_EXPLAIN set, evaluation gives the second model no input, while serving under the same
    settings gives it one per image (counted at each model's predict)."""
    from dfscan.settings import Settings
    from worker.inference import factory
    from worker.inference.model import explain
    from worker.training.data import Example
    from worker.training.evaluate import score_examples

    first = str(save_tiny_vit(tmp_path / "first", REAL_FAKE, seed=1))
    second = str(save_tiny_vit(tmp_path / "second", REAL_FAKE, seed=2))
    inputs = {first: 0, second: 0}
    heatmaps = []
    loaded = factory.load_classifier

    def counting(ref: str, **kwargs):  # type: ignore[no-untyped-def]
        model = loaded(ref, **kwargs)
        predict = model.predict

        def counted(pixels: torch.Tensor) -> list[float]:
            inputs[ref] += len(pixels)
            return predict(pixels)

        model.predict = counted  # type: ignore[method-assign]
        return model

    real_heatmap = explain.heatmap
    monkeypatch.setattr(factory, "load_classifier", counting)
    monkeypatch.setattr(
        "worker.inference.judge.heatmap", lambda *a, **k: heatmaps.append(1) or real_heatmap(*a, **k)
    )
    images = [_bytes_of(Image.new("RGB", (64, 48), color)) for color in (GREY, RED, (10, 200, 30))]
    examples = [Example(f"e{i}", i % 2, lambda data=data: data) for i, data in enumerate(images)]
    settings = Settings(device="cpu", threads=1, faces="off", second_model=second, explain=True)
    labels, scores, skipped, version = score_examples(first, examples, settings=settings)
    assert (len(scores), skipped) == (3, [])
    assert inputs == {first: 3, second: 0} and heatmaps == []
    assert "+second:" not in version
    # The same settings on the serving road do pay for both: the counts above would have caught it.
    judge = factory.new_judge(settings, factory.new_classifier(settings, model=first))
    try:
        verdict = judge.judge_bytes(images[0])
    finally:
        judge.close()
    assert verdict.second_opinion is not None and verdict.explanation is not None
    assert inputs[second] == 1 and heatmaps == [1]
