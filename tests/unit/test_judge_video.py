"""Videos through Judge: the same road as images, many inputs, one verdict with its timeline."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch

from dfscan.verdicts import VIDEO, Verdict, label_for
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.videos import hostile_corpus, make_clip
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge, judge_stream
from worker.inference.model.batcher import BACKGROUND
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.model.preprocess import to_tensor
from worker.inference.sources.read import SourcePolicy
from worker.inference.video.decode import VideoPolicy, sample_frames

av.logging.set_level(av.logging.PANIC)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return load_classifier(
        str(save_tiny_vit(tmp_path_factory.mktemp("m") / "m", REAL_FAKE, seed=3, head_scale=10.0))
    )


def _judge(detector: Classifier, root: Path, *, cache: float | None = None, **sources: int) -> Judge:
    return Judge(
        detector,
        sources=SourcePolicy(allowed_roots=(root,), **sources),  # type: ignore[arg-type]
        images=ImagePolicy(),
        videos=VideoPolicy(frames=16),
        batch_size=4,
        known=lambda sha, version: cache,
    )


def test_a_video_is_judged_frame_by_frame_into_one_verdict(detector: Classifier, tmp_path: Path) -> None:
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


def test_hostile_videos_are_failed_verdicts_and_images_still_pass(
    detector: Classifier, tmp_path: Path
) -> None:
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


def test_a_video_over_the_video_byte_cap_is_too_large(detector: Classifier, tmp_path: Path) -> None:
    data = make_clip(seconds=1.0)
    (tmp_path / "c.mp4").write_bytes(data)
    judge = _judge(detector, tmp_path, max_bytes=100, max_video_bytes=len(data) - 1)
    try:
        verdict = judge.judge(str(tmp_path / "c.mp4"))
    finally:
        judge.close()
    assert verdict.error_code == "TOO_LARGE" and "for videos" in (verdict.error or "")
    assert verdict.error_detail == {"limit": "bytes", "former_code": "TOO_LARGE"}


# --- frames on faces (issue 11 through the faces path of issue 10) --------------------------------

WITH_FACE = [True, True, False, True, False, False, True, True]  # 8 frames, one sampled each


@pytest.fixture(scope="module")
def mtcnn():  # type: ignore[no-untyped-def]
    pytest.importorskip("skimage", reason="the clips need scikit-image's astronaut photo (dev extra)")
    from worker.inference.faces.crops import load_face_detector

    return load_face_detector("mtcnn", "cpu")


@pytest.fixture(scope="module")
def face_clip_data() -> tuple[bytes, list[tuple[int, int, int, int] | None]]:
    pytest.importorskip("skimage", reason="the clips need scikit-image's astronaut photo (dev extra)")
    from tests.fixtures.faces import face_clip

    return face_clip(WITH_FACE, size=(400, 300), face_px=110)


def _faces_judge(detector: Classifier, mtcnn, mode: str) -> Judge:  # type: ignore[no-untyped-def]
    from worker.inference.faces.crops import FacePolicy

    return Judge(
        detector,
        sources=SourcePolicy(),
        images=ImagePolicy(),
        # frame_side 200: frames are sampled at half size, so boxes must be mapped back by 2
        videos=VideoPolicy(frames=len(WITH_FACE), frame_side=200),
        batch_size=4,
        faces=FacePolicy(mode, mtcnn, margin=0.3, max_faces=8, min_face_px=32),
    )


def test_video_frames_are_judged_on_their_faces_and_faceless_frames_whole_in_auto(  # type: ignore[no-untyped-def]
    detector: Classifier, mtcnn, face_clip_data
) -> None:
    from tests.fixtures.faces import matches
    from worker.inference.faces.crops import select_faces, square_crop

    data, truth = face_clip_data
    judge = _faces_judge(detector, mtcnn, "auto")
    try:
        verdict = judge.judge_bytes(data, source="clip.mp4")
    finally:
        judge.close()
    assert verdict.done, verdict.error
    assert verdict.judged_on == "faces" and verdict.media == "video"
    assert "+faces:auto:" in str(verdict.model_version)
    assert verdict.detect_ms > 0
    assert verdict.frames is not None and len(verdict.frames) == len(WITH_FACE)
    sampled = list(sample_frames(data, VideoPolicy(frames=len(WITH_FACE), frame_side=200)))
    assert all(f.image.size == (200, 150) and f.size == (400, 300) for f in sampled)
    n_inputs = 0
    for frame, sample, box in zip(verdict.frames, sampled, truth, strict=True):
        if box is None:  # auto: no face, the whole frame is judged
            assert frame.faces == ()
            whole = detector.predict(to_tensor(sample.image, detector.preprocess).unsqueeze(0))[0]
            assert frame.fake_score == pytest.approx(whole, abs=1e-5)
            n_inputs += 1
            continue
        assert len(frame.faces) == 1 and matches(frame.faces[0].box, box), (frame.faces, box)
        chosen = select_faces(mtcnn.detect([sample.image])[0], 8, 32)
        crops = torch.stack(
            [to_tensor(square_crop(sample.image, f, 0.3), detector.preprocess) for f in chosen]
        )
        expected = detector.predict(crops)
        assert [f.fake_score for f in frame.faces] == pytest.approx(expected, abs=1e-5)
        assert frame.fake_score == max(f.fake_score for f in frame.faces)  # the max rule
        n_inputs += len(chosen)
    assert judge.batcher.stats.items == n_inputs  # crops and whole frames: one model batcher
    out = verdict.output()
    faced = [f for f in out["frames"] if f["faces"]]
    assert len(faced) == sum(WITH_FACE)
    assert set(faced[0]["faces"][0]) == {"box", "score", "fake_score", "label"}
    assert faced[0]["faces"][0]["label"] == label_for(faced[0]["faces"][0]["fake_score"], 0.5)
    assert len(verdict.frame_rows()) == len(WITH_FACE)


def test_require_leaves_faceless_frames_unjudged_and_a_faceless_video_not_applicable(  # type: ignore[no-untyped-def]
    detector: Classifier, mtcnn, face_clip_data
) -> None:
    from tests.fixtures.faces import face_clip
    from worker.inference.video.aggregate import aggregate_frames

    data, truth = face_clip_data
    faceless, _ = face_clip([False] * 4, size=(400, 300))
    judge = _faces_judge(detector, mtcnn, "require")
    try:
        verdict = judge.judge_bytes(data, source="clip.mp4")
        empty = judge.judge_bytes(faceless, source="empty.mp4")
    finally:
        judge.close()
    assert verdict.done and verdict.judged_on == "faces" and verdict.frames is not None
    assert [f.fake_score is not None for f in verdict.frames] == WITH_FACE
    assert all(f.faces == () for f in verdict.frames if f.fake_score is None)
    judged = [(f.t, f.fake_score) for f in verdict.frames if f.fake_score is not None]
    rows = verdict.frame_rows()
    assert [row[:2] for row in rows] == judged  # unjudged frames have no verdict_frames row
    assert all(
        row[2] == [face.row() for face in f.faces]
        for row, f in zip(rows, [f for f in verdict.frames if f.faces], strict=True)
    )
    expected = aggregate_frames(judged)  # the video score aggregates judged frames only
    assert (verdict.fake_score, verdict.peak_t) == (expected.fake_score, expected.peak_t)
    assert "+faces:require:" in str(verdict.model_version)

    assert empty.status == "done" and empty.label == "not_applicable" and empty.fake_score is None
    assert empty.media == "video" and empty.peak_t is None and empty.frames is not None
    assert [f.fake_score for f in empty.frames] == [None] * 4 and empty.frame_rows() == []
    assert empty.output()["frames"][0] == {"t": 0.0, "fake_score": None, "faces": []}


def test_an_image_judged_beside_a_video_goes_ahead_of_its_frames_and_never_shares_their_batch(
    detector: Classifier, tmp_path: Path
) -> None:
    """On a CPU every input costs its full forward pass: the image waits for at most the one frame
    being run, never for the frames queued before it, and no batch holds both."""
    import copy
    import threading
    import time

    from PIL import Image

    batches: list[list[str]] = []
    running = threading.Event()
    slow = copy.copy(detector)

    def predict(pixels: torch.Tensor) -> list[float]:
        running.set()
        time.sleep(0.05)  # a forward pass that takes a while, so frames queue up behind it
        # The image is a flat mid-grey: every pixel normalises to ~0; frames of the clip are not flat.
        batches.append(["image" if float(p.std()) < 1e-3 else "frame" for p in pixels])
        return detector.predict(pixels)

    slow.predict = predict  # type: ignore[method-assign]
    judge = Judge(
        slow,
        sources=SourcePolicy(),
        images=ImagePolicy(),
        videos=VideoPolicy(frames=32, in_flight=4),
        batch_size=8,
        batch_wait=0.0,
    )
    assert judge.batcher.mix is False  # a CPU detector
    video = make_clip(width=48, height=40, fps=10, seconds=4.0, gop=10)
    buffer = __import__("io").BytesIO()
    Image.new("RGB", (40, 30), (128, 128, 128)).save(buffer, "PNG")
    verdicts: list[Verdict] = []
    thread = threading.Thread(target=lambda: verdicts.append(judge.judge_bytes(video)))
    try:
        thread.start()
        assert running.wait(10)
        time.sleep(0.12)  # frames are waiting now
        run_before = sum(len(b) for b in batches)
        waiting = judge.batcher.waiting(BACKGROUND)
        image = judge.judge_bytes(buffer.getvalue())
        thread.join(30)
    finally:
        judge.close()
    assert image.done and verdicts and verdicts[0].done, (image.error, verdicts)
    flat = [kind for batch in batches for kind in batch]
    assert flat.count("frame") == 32 and flat.count("image") == 1
    assert all(len(set(batch)) == 1 for batch in batches), batches  # never mixed
    at = next(i for i, batch in enumerate(batches) if batch == ["image"])
    assert at < len(batches) - 1 and "frame" in batches[-1]  # the video was still going
    # Ahead of the frames queued when it came: it waited for the one frame being run, no more.
    assert waiting >= 2, waiting
    assert flat.index("image") <= run_before + judge.batcher.background_batch
    assert judge.batcher.background_batch == 1


def test_the_same_video_again_is_answered_from_the_cache_with_its_frames(
    detector: Classifier, tmp_path: Path
) -> None:
    """Re-uploads of one clip are common in moderation: the second costs a look-up, not 16 forwards.
    The cache is keyed on the model *and* the sampling (``video_version``); an image answer is ignored."""
    from dfscan.verdicts import Stored

    data = make_clip(width=48, height=40, fps=10, seconds=2.0, gop=10)
    (tmp_path / "c.mp4").write_bytes(data)
    asked: list[str] = []
    first = _judge(detector, tmp_path)
    try:
        judged = first.judge(str(tmp_path / "c.mp4"))
    finally:
        first.close()
    assert judged.done and judged.model_version == first.video_version
    assert first.video_version == f"{first.version}+video:frames=16:side=640"
    stored = Stored(
        judged.fake_score,
        judged.judged_on,
        media="video",
        duration_s=judged.duration_s,
        peak_t=judged.peak_t,
        frames=judged.frames or (),
    )

    def known(sha: str, version: str) -> Stored | float | None:
        asked.append(version)
        return stored if version == first.video_version else 0.99

    again = Judge(
        detector,
        sources=SourcePolicy(allowed_roots=(tmp_path,)),
        images=ImagePolicy(),
        videos=VideoPolicy(frames=16),
        known=known,
    )
    try:
        verdict = again.judge(str(tmp_path / "c.mp4"))
    finally:
        again.close()
    assert asked == [again.video_version]
    assert verdict.done and verdict.cached is True and again.batcher.stats.items == 0
    assert (verdict.fake_score, verdict.peak_t, verdict.duration_s, verdict.frames) == (
        judged.fake_score,
        judged.peak_t,
        judged.duration_s,
        judged.frames,
    )
    assert verdict.media == "video" and verdict.model_version == again.video_version
    # An answer that is not a video's (a float: an image's score) is not used: the video is judged.
    image_like = Judge(
        detector,
        sources=SourcePolicy(allowed_roots=(tmp_path,)),
        images=ImagePolicy(),
        videos=VideoPolicy(frames=16),
        known=lambda sha, version: 0.99,
    )
    try:
        fresh = image_like.judge(str(tmp_path / "c.mp4"))
    finally:
        image_like.close()
    assert fresh.cached is False and image_like.batcher.stats.items == 16
