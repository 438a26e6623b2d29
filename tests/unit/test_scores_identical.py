"""Scores identical across the region road: the Judge's scores on images (whole and faces) and videos
(whole and faces) equal a reference computed here from the primitives alone, the way the code before
the one region road computed them (decode, detect, choose, square crop, preprocess, one forward pass,
the max over a frame's inputs, the moving median across frames).

Written and passing on the code before the refactor; it must keep passing after it."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from dfscan.verdicts import FACES, IMAGE, VIDEO
from tests.fixtures.faces import face_clip, face_scene
from tests.fixtures.models import DEEPFAKE_REAL, save_tiny_vit
from tests.fixtures.videos import make_clip
from worker.inference.faces.crops import FacePolicy, load_face_detector, select_faces, square_crop
from worker.inference.images.decode import ImagePolicy, decode_image
from worker.inference.judge import Judge
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.model.preprocess import load_pixels, to_tensor
from worker.inference.sources.read import SourcePolicy
from worker.inference.video.aggregate import aggregate_frames
from worker.inference.video.decode import VideoPolicy, sample_frames

pytest.importorskip("skimage", reason="the scenes need scikit-image's astronaut photo (dev extra)")

TOL = 1e-5
MARGIN, MAX_FACES, MIN_FACE_PX = 0.3, 8, 32
VIDEOS = VideoPolicy(frames=8)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    path = save_tiny_vit(tmp_path_factory.mktemp("model") / "m", DEEPFAKE_REAL, seed=5, head_scale=30.0)
    return load_classifier(str(path))


@pytest.fixture(scope="module")
def mtcnn():  # type: ignore[no-untyped-def]
    return load_face_detector("mtcnn", "cpu")


def _judge(detector: Classifier, face_detector, mode: str | None) -> Judge:  # type: ignore[no-untyped-def]
    faces = None
    if mode is not None:
        faces = FacePolicy(mode, face_detector, margin=MARGIN, max_faces=MAX_FACES, min_face_px=MIN_FACE_PX)
    return Judge(
        detector, sources=SourcePolicy(), images=ImagePolicy(), videos=VIDEOS, faces=faces, batch_size=4
    )


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _predict(detector: Classifier, images: list[Image.Image]) -> list[float]:
    """One forward pass per input (no batch neighbours), as a reference free of batching."""
    return [detector.predict(to_tensor(image, detector.preprocess).unsqueeze(0))[0] for image in images]


def _reference_frame(detector: Classifier, mtcnn, image: Image.Image, mode: str | None):  # type: ignore[no-untyped-def]
    """(score or None, [(box, detector score, p(fake))]) of one frame, the pre-refactor way."""
    if mode is None:
        return _predict(detector, [image])[0], []
    chosen = select_faces(mtcnn.detect([image])[0], MAX_FACES, MIN_FACE_PX)
    if not chosen:
        return (None if mode == "require" else _predict(detector, [image])[0]), []
    scores = _predict(detector, [square_crop(image, face, MARGIN) for face in chosen])
    return max(scores), [(face.box, face.score, p) for face, p in zip(chosen, scores, strict=True)]


def test_a_whole_image_scores_as_before(detector: Classifier) -> None:
    data = _png(face_scene(90, seed=4, size=(320, 240)).image)
    judge = _judge(detector, None, None)
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    pixels, size = load_pixels(data, detector.preprocess, ImagePolicy())
    assert verdict.done, verdict.error
    assert (verdict.judged_on, verdict.width, verdict.height) == (IMAGE, *size)
    assert verdict.fake_score == pytest.approx(detector.predict(pixels.unsqueeze(0))[0], abs=TOL)


@pytest.mark.parametrize("mode", ["auto", "require"])
def test_an_image_on_faces_scores_as_before(detector: Classifier, mtcnn, mode: str) -> None:  # type: ignore[no-untyped-def]
    data = _png(face_scene([120, 100], seed=11, size=(640, 480)).image)
    judge = _judge(detector, mtcnn, mode)
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    score, faces = _reference_frame(detector, mtcnn, decode_image(data, ImagePolicy()), mode)
    assert verdict.done, verdict.error
    assert len(faces) == 2, "the scene's two faces are found"
    assert verdict.judged_on == FACES
    assert verdict.fake_score == pytest.approx(score, abs=TOL)
    assert [(f.box, f.score) for f in verdict.faces] == [(b, pytest.approx(s)) for b, s, _ in faces]
    assert [f.fake_score for f in verdict.faces] == pytest.approx([p for _, _, p in faces], abs=TOL)


def test_an_image_without_a_face_in_auto_scores_whole_as_before(detector: Classifier, mtcnn) -> None:  # type: ignore[no-untyped-def]
    data = _png(Image.new("RGB", (200, 150), (40, 120, 200)))
    judge = _judge(detector, mtcnn, "auto")
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    assert (verdict.done, verdict.judged_on, verdict.faces) == (True, IMAGE, ())
    assert verdict.fake_score == pytest.approx(
        _predict(detector, [decode_image(data, ImagePolicy())])[0], abs=TOL
    )


def _reference_video(detector: Classifier, mtcnn, data: bytes, mode: str | None):  # type: ignore[no-untyped-def]
    frames = []
    for sampled in sample_frames(data, VIDEOS):
        score, faces = _reference_frame(detector, mtcnn, sampled.image, mode)
        frames.append((sampled.t, score, faces))
    judged = [(t, s) for t, s, _ in frames if s is not None]
    return frames, (aggregate_frames(judged) if judged else None)


def _assert_video(verdict, frames, total, *, on_faces: bool) -> None:  # type: ignore[no-untyped-def]
    assert verdict.done, verdict.error
    assert verdict.media == VIDEO
    assert verdict.judged_on == (FACES if on_faces else IMAGE)
    assert [f.t for f in verdict.frames] == [t for t, _, _ in frames]
    for got, (_, score, faces) in zip(verdict.frames, frames, strict=True):
        assert got.fake_score == (None if score is None else pytest.approx(score, abs=TOL))
        assert [f.fake_score for f in got.faces] == pytest.approx([p for _, _, p in faces], abs=TOL)
    assert verdict.fake_score == pytest.approx(total.fake_score, abs=TOL)
    assert verdict.peak_t == total.peak_t


def test_a_whole_video_scores_as_before(detector: Classifier) -> None:
    data = make_clip(width=64, height=48, fps=10, seconds=2.0, gop=10, fake_spans=((0.5, 1.0),))
    judge = _judge(detector, None, None)
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    frames, total = _reference_video(detector, None, data, None)
    assert len(frames) == 8
    _assert_video(verdict, frames, total, on_faces=False)


@pytest.mark.parametrize("mode", ["auto", "require"])
def test_a_video_on_faces_scores_as_before(detector: Classifier, mtcnn, mode: str) -> None:  # type: ignore[no-untyped-def]
    data, _ = face_clip([True, True, False, True, False, True, True, True], fps=4)
    judge = _judge(detector, mtcnn, mode)
    try:
        verdict = judge.judge_bytes(data)
    finally:
        judge.close()
    frames, total = _reference_video(detector, mtcnn, data, mode)
    assert sum(1 for _, _, faces in frames if faces) >= 4, "faces are found in most face frames"
    _assert_video(verdict, frames, total, on_faces=True)
