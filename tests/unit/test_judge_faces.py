"""Judge on faces: every chosen face's crop is a model input of the same batcher, the image's score is
their maximum; auto / require / off; the cache keyed by a version that names the face detector."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from dfscan.verdicts import FaceVerdict, Stored
from tests.fixtures.faces import exif_jpeg, face_scene, matches
from tests.fixtures.models import DEEPFAKE_REAL, save_tiny_vit
from worker.inference.faces.crops import Face, FacePolicy, load_face_detector, select_faces, square_crop
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge, judge_stream
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.model.preprocess import to_tensor
from worker.inference.sources.read import SourcePolicy

pytest.importorskip("skimage", reason="the scenes need scikit-image's astronaut photo (dev extra)")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    path = save_tiny_vit(tmp_path_factory.mktemp("model") / "m", DEEPFAKE_REAL, seed=2, head_scale=30.0)
    return load_classifier(str(path))


@pytest.fixture(scope="module")
def mtcnn():  # type: ignore[no-untyped-def]
    return load_face_detector("mtcnn", "cpu")


class Recording:
    """A face detector that records the batch sizes it was called with."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.version = inner.version
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        with self.lock:
            self.batches.append(len(images))
        return self.inner.detect(images)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def make(detector: Classifier, face_detector, mode: str | None, **kwargs) -> Judge:  # type: ignore[no-untyped-def]
    faces = None if mode is None else FacePolicy(mode, face_detector, margin=0.3, max_faces=8, min_face_px=32)
    return Judge(detector, sources=SourcePolicy(), images=ImagePolicy(), faces=faces, **kwargs)


def score_of(detector: Classifier, image: Image.Image) -> float:
    return detector.predict(to_tensor(image, detector.preprocess).unsqueeze(0))[0]


def test_faces_are_judged_one_by_one_and_the_image_takes_the_maximum(detector: Classifier, mtcnn) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene([180, 90], seed=7, size=(800, 600), kind="field")
    judge = make(detector, mtcnn, "auto")
    try:
        verdict = judge.judge_bytes(png(scene.image), source="two.png")
    finally:
        judge.close()
    assert verdict.done and verdict.judged_on == "faces" and len(verdict.faces) == 2
    assert (verdict.faces_found, verdict.faces_judged, verdict.faces_skipped) == (2, 2, {})
    assert verdict.detect_ms > 0 and verdict.infer_ms > 0  # detection timed apart from the model
    assert (
        verdict.model_version
        == f"{detector.version}+faces:auto:{mtcnn.version}:margin=0.3,min=32,max=8,score=0.9"
    )
    chosen = select_faces(mtcnn.detect([scene.image])[0], 8, 32)
    assert [f.box for f in verdict.faces] == [f.box for f in chosen]  # largest first, in original pixels
    assert all(matches(f.box, t) for f, t in zip(verdict.faces, scene.truth, strict=True))
    for face, found in zip(verdict.faces, chosen, strict=True):
        assert face.fake_score == pytest.approx(
            score_of(detector, square_crop(scene.image, found, 0.3)), abs=1e-6
        )
        assert face.score == found.score
    assert verdict.fake_score == max(f.fake_score for f in verdict.faces)
    out = verdict.output()
    assert out["judged_on"] == "faces"
    assert out["faces"][0]["box"] == list(verdict.faces[0].box)
    assert {f["label"] for f in out["faces"]} <= {"real", "fake"}
    assert [f["label"] for f in out["faces"]] == [
        "fake" if f.fake_score >= verdict.threshold else "real"  # type: ignore[operator]
        for f in verdict.faces
    ]


def test_auto_without_a_face_judges_the_whole_image(detector: Classifier, mtcnn) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene([], seed=8, size=(640, 480), kind="field")
    judge = make(detector, mtcnn, "auto")
    try:
        verdict = judge.judge_bytes(png(scene.image))
    finally:
        judge.close()
    assert (verdict.status, verdict.judged_on, verdict.faces) == ("done", "image", ())
    assert verdict.fake_score == pytest.approx(score_of(detector, scene.image), abs=1e-6)
    assert "+faces:auto:" in str(verdict.model_version)


def test_require_without_a_face_is_done_and_not_applicable(detector: Classifier, mtcnn) -> None:  # type: ignore[no-untyped-def]
    judge = make(detector, mtcnn, "require")
    tiny = face_scene(20, seed=9, size=(640, 480), kind="field")  # a face, but under min_face_px
    try:
        verdicts = [
            judge.judge_bytes(png(face_scene([], seed=8, size=(640, 480)).image)),
            judge.judge_bytes(png(tiny.image)),
        ]
    finally:
        judge.close()
    for verdict in verdicts:
        assert (verdict.status, verdict.label, verdict.fake_score, verdict.faces) == (
            "done",
            "not_applicable",
            None,
            (),
        )
        assert verdict.output()["fake_score"] is None and verdict.output()["faces"] == []
        assert "+faces:require:" in str(verdict.model_version)


def test_off_judges_the_whole_image_under_the_plain_version(detector: Classifier) -> None:
    scene = face_scene(150, seed=10, size=(640, 480), kind="field")
    judge = make(detector, None, None)
    try:
        verdict = judge.judge_bytes(png(scene.image))
    finally:
        judge.close()
    assert (verdict.judged_on, verdict.faces, verdict.model_version) == ("image", (), detector.version)
    assert verdict.detect_ms == 0.0  # no detector ran


def test_exif_oriented_boxes(detector: Classifier, mtcnn) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene(140, seed=11, size=(800, 600), kind="field", centers=[(220, 250)])
    judge = make(detector, mtcnn, "require")
    try:
        verdict = judge.judge_bytes(exif_jpeg(scene.image, 6))
    finally:
        judge.close()
    assert (verdict.width, verdict.height) == (800, 600)
    assert len(verdict.faces) == 1 and matches(verdict.faces[0].box, scene.truth[0])


def test_the_cache_is_asked_with_the_faces_version_and_its_answer_keeps_the_faces(
    detector: Classifier, mtcnn
) -> None:  # type: ignore[no-untyped-def]
    asked: list[tuple[str, str]] = []
    stored = Stored(
        0.8, "faces", (FaceVerdict((10, 20, 30, 40), 0.99, 0.8), FaceVerdict((50, 60, 30, 40), 0.97, 0.1))
    )

    def known(sha: str, version: str) -> Stored | float | None:
        asked.append((sha, version))
        return stored if "+faces:" in version else 0.3

    faces_judge = make(detector, mtcnn, "auto", known=known, threshold=0.5)
    plain_judge = make(detector, None, None, known=known)
    data = png(face_scene(100, seed=1, size=(400, 300)).image)
    try:
        on_faces, whole = faces_judge.judge_bytes(data), plain_judge.judge_bytes(data)
    finally:
        faces_judge.close()
        plain_judge.close()
    assert [v for _, v in asked] == [faces_judge.version, detector.version]
    assert faces_judge.version != plain_judge.version
    assert (on_faces.cached, on_faces.judged_on, on_faces.fake_score, on_faces.label) == (
        True,
        "faces",
        0.8,
        "fake",
    )
    assert [f["label"] for f in on_faces.output()["faces"]] == ["fake", "real"]
    assert (whole.cached, whole.judged_on, whole.fake_score, whole.faces) == (True, "image", 0.3, ())
    na = make(detector, mtcnn, "require", known=lambda sha, version: Stored(None, "image"))
    try:
        cached_na = na.judge_bytes(data)
    finally:
        na.close()
    assert (cached_na.label, cached_na.fake_score, cached_na.cached) == ("not_applicable", None, True)


def test_concurrent_images_share_the_detector_batches_and_the_model_batcher(
    detector: Classifier, mtcnn, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    recording = Recording(mtcnn)
    paths = []
    for k in range(8):
        path = tmp_path / f"{k}.png"
        face_scene(120, seed=20 + k, size=(480, 360), kind="field").image.save(path)
        paths.append(str(path))
    judge = Judge(
        detector,
        sources=SourcePolicy(allowed_roots=(tmp_path,)),
        images=ImagePolicy(),
        faces=FacePolicy("auto", recording),  # type: ignore[arg-type]
        batch_size=8,
        batch_wait=0.2,
    )
    try:
        verdicts = list(judge_stream(judge, paths, threads=8))
    finally:
        judge.close()
    assert [v.judged_on for v in verdicts] == ["faces"] * 8
    assert sum(recording.batches) == 8 and max(recording.batches) > 1, recording.batches
    assert judge.batcher.stats.items == 8 and judge.batcher.stats.largest > 1


def test_a_face_detector_fault_fails_the_image_as_retryable(detector: Classifier) -> None:
    class Broken:
        version = "broken"

        def detect(self, images: list[Image.Image]) -> list[list[Face]]:
            raise RuntimeError("device lost")

    judge = make(detector, Broken(), "auto")
    try:
        verdict = judge.judge_bytes(png(Image.new("RGB", (64, 64))))
    finally:
        judge.close()
    assert (verdict.status, verdict.error_code, verdict.retryable) == ("failed", "INFERENCE_FAILED", True)
    assert "face detector fault" in str(verdict.error)


def test_hostile_shapes_do_not_break_the_faces_road(detector: Classifier, mtcnn) -> None:  # type: ignore[no-untyped-def]
    judge = make(detector, mtcnn, "auto")
    try:
        thin = judge.judge_bytes(png(Image.new("RGB", (40000, 1), (120, 100, 90))))
    finally:
        judge.close()
    assert (thin.status, thin.judged_on, thin.faces) == ("done", "image", ())


def test_the_factory_builds_the_face_policy_from_settings_and_from_a_version_trained_on_faces(
    detector: Classifier,
) -> None:
    from dfscan.settings import Settings
    from worker.inference.factory import face_policy, new_judge

    assert face_policy(Settings(faces="off"), detector) is None
    auto = face_policy(Settings(faces="auto", face_margin=0.2, max_faces=3, min_face_px=40), detector)
    assert auto is not None and (auto.mode, auto.margin, auto.max_faces, auto.min_face_px) == (
        "auto",
        0.2,
        3,
        40,
    )
    assert auto.detector.version.startswith("mtcnn-")
    # a version trained on faces is served on faces, with the margin it was trained with
    trained = {
        "detector": "mtcnn",
        "margin": 0.25,
        "min_face_px": 32,
        "max_faces": 8,
        "detector_version": "x",
    }
    served = face_policy(Settings(faces="off"), detector, trained_on=trained)
    assert served is not None and (served.mode, served.margin) == ("auto", 0.25)
    required = face_policy(Settings(faces="require"), detector, trained_on=trained)
    assert required is not None and required.mode == "require"
    judge = new_judge(Settings(faces="require"), detector)
    try:
        assert "+faces:require:mtcnn-" in judge.version
    finally:
        judge.close()
    with pytest.raises(Exception, match="unknown face detector 'nope'"):
        face_policy(Settings(faces="auto"), detector, trained_on={"detector": "nope"})
