"""Per-job options (dfscan/options.py): checked at every intake with BAD_OPTION, and honoured by the Judge
for one job (``Judge.for_options``) without touching the settings every other job is judged under."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from dfscan.exceptions import BadMessageError, BadOptionError
from dfscan.options import DEFAULT_OPTIONS, JobOptions, options_of, parse_options
from tests.fixtures.faces import face_scene
from tests.fixtures.models import DEEPFAKE_REAL, save_tiny_vit
from worker.inference.faces.crops import FacePolicy, load_face_detector
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.sources.read import SourcePolicy
from worker.messages import parse_scan_message


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    path = save_tiny_vit(tmp_path_factory.mktemp("model") / "m", DEEPFAKE_REAL, seed=2, head_scale=30.0)
    return load_classifier(str(path))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("explain", "faces", "stored"),
    [
        (None, None, None),
        (True, None, {"explain": True}),
        (False, "off", {"explain": False, "faces": "off"}),
        (None, "require", {"faces": "require"}),
    ],
)
def test_good_options_are_stored_as_given(explain: object, faces: object, stored: object) -> None:
    options = parse_options(explain, faces)
    assert options.stored() == stored
    assert options_of(options.stored()) == options  # what the worker reads back is what was asked


@pytest.mark.parametrize(
    ("explain", "faces", "named"),
    [("yes", None, "explain"), (1, None, "explain"), (None, "faces", "faces"), (None, True, "faces")],
)
def test_bad_options_are_bad_option(explain: object, faces: object, named: str) -> None:
    with pytest.raises(BadOptionError, match=named) as caught:
        parse_options(explain, faces)
    assert caught.value.code == "BAD_OPTION" and isinstance(caught.value, ValueError)


def test_a_stored_row_is_checked_again() -> None:
    with pytest.raises(BadOptionError, match="unknown options"):
        options_of({"explain": True, "threshold": 0.1})
    with pytest.raises(BadOptionError, match="faces"):
        options_of({"faces": "maybe"})
    assert options_of(None) is DEFAULT_OPTIONS


def test_a_foreign_message_carries_options_or_is_refused_with_their_code() -> None:
    message = parse_scan_message(
        [], {"sources": ["https://example.com/a.jpg"], "explain": True, "faces": "off"}
    )
    assert message.options == JobOptions(explain=True, faces="off")  # type: ignore[union-attr]
    with pytest.raises(BadMessageError) as caught:
        parse_scan_message([], {"sources": ["https://example.com/a.jpg"], "faces": "sometimes"})
    assert caught.value.code == "BAD_OPTION"
    with pytest.raises(BadMessageError) as beside_job:  # a job's options live on its row, not in its message
        parse_scan_message([], {"job_id": "00000000-0000-0000-0000-000000000001", "explain": True})
    assert beside_job.value.code == "BAD_MESSAGE"


def test_explain_is_paid_only_by_the_job_that_asks(detector: Classifier) -> None:
    judge = Judge(detector, sources=SourcePolicy(), images=ImagePolicy())
    data = png(face_scene([], seed=3, size=(320, 240)).image)
    try:
        plain = judge.judge_bytes(data, source="a.png")
        asked = judge.for_options(JobOptions(explain=True)).judge_bytes(data, source="a.png")
        again = judge.judge_bytes(data, source="a.png")
    finally:
        judge.close()
    assert plain.explanation is None and again.explanation is None
    assert asked.explanation is not None and len(asked.explanation) == 1
    assert asked.explanation[0].box is None  # the whole image was the one region
    assert asked.fake_score == pytest.approx(plain.fake_score, abs=1e-6)
    assert asked.model_version == plain.model_version  # a heatmap does not change the score
    assert judge.for_options(DEFAULT_OPTIONS) is judge
    assert not judge.explain  # the settings' judge is untouched


def test_a_job_can_turn_explain_off_when_the_worker_explains(detector: Classifier) -> None:
    judge = Judge(detector, sources=SourcePolicy(), images=ImagePolicy(), explain=True)
    data = png(face_scene([], seed=4, size=(320, 240)).image)
    try:
        verdict = judge.for_options(JobOptions(explain=False)).judge_bytes(data)
        default = judge.judge_bytes(data)
    finally:
        judge.close()
    assert verdict.explanation is None and default.explanation is not None


def test_faces_per_job_override_the_settings_both_ways(detector: Classifier) -> None:
    pytest.importorskip("skimage", reason="the scene needs scikit-image's astronaut photo (dev extra)")
    mtcnn = load_face_detector("mtcnn", "cpu")
    loads: list[int] = []

    def load_faces() -> FacePolicy:
        loads.append(1)
        return FacePolicy("auto", mtcnn, margin=0.3, max_faces=8, min_face_px=32)

    scene = png(face_scene(160, seed=4, size=(640, 480)).image)
    faces_judge = Judge(detector, sources=SourcePolicy(), images=ImagePolicy(), faces=load_faces())
    whole_judge = Judge(detector, sources=SourcePolicy(), images=ImagePolicy(), load_faces=load_faces)
    try:
        on_faces = faces_judge.judge_bytes(scene)
        off = faces_judge.for_options(JobOptions(faces="off")).judge_bytes(scene)
        whole = whole_judge.judge_bytes(scene)
        asked = [whole_judge.for_options(JobOptions(faces="auto")).judge_bytes(scene) for _ in range(2)]
        required = whole_judge.for_options(JobOptions(faces="require")).judge_bytes(scene)
    finally:
        faces_judge.close()
        whole_judge.close()
    assert on_faces.judged_on == "faces" and len(on_faces.faces) == 1
    # off for this job: the whole image, as a judge without faces scores it, under that judge's version
    assert (off.judged_on, off.faces, off.faces_found) == ("image", (), None)
    assert off.fake_score == pytest.approx(whole.fake_score, abs=1e-6)
    assert off.model_version == whole.model_version == detector.version
    # faces asked for where the settings serve none: the detector is loaded once, on the first job
    assert [v.judged_on for v in asked] == ["faces", "faces"] and len(loads) == 2  # 1 above + 1 lazily
    assert asked[0].fake_score == pytest.approx(on_faces.fake_score, abs=1e-6)
    assert asked[0].model_version == on_faces.model_version
    assert "+faces:require:" in str(required.model_version) and required.judged_on == "faces"
    assert whole_judge.faces is None  # the settings' judge still judges whole images
