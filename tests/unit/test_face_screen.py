"""Which faces are judged and why the others are not: every face found is judged or counted by reason."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.fixtures.models import DEEPFAKE_REAL, save_tiny_vit
from worker.inference.faces.crops import Face, FacePolicy
from worker.inference.faces.screen import FaceCounts, choose_faces, plausible
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge
from worker.inference.model.classifier import load_classifier
from worker.inference.sources.read import SourcePolicy

# A frontal face's five points in a 100x100 box at the origin: eyes, nose, mouth corners.
FRONTAL = ((30.0, 35.0), (70.0, 35.0), (50.0, 55.0), (35.0, 75.0), (65.0, 75.0))


def face(x: int, side: int, score: float = 0.99, landmarks=FRONTAL) -> Face:  # type: ignore[no-untyped-def]
    scale = side / 100
    points = None if landmarks is None else tuple((x + px * scale, py * scale) for px, py in landmarks)
    return Face((x, 0, side, side), score, points)


def test_every_face_is_judged_or_counted_under_its_first_reason() -> None:
    faces = [
        face(0, 200),
        face(300, 150),
        face(500, 120),
        face(700, 20),  # too small
        face(800, 90, score=0.75),  # low score (and big enough)
        face(900, 90, landmarks=((50.0, 80.0), (60.0, 80.0), (55.0, 50.0), (40.0, 20.0), (70.0, 20.0))),
        face(1000, 10, score=0.5),  # low score first, though also too small
    ]
    choice = choose_faces(faces, max_faces=2, min_face_px=24, min_score=0.9)
    assert [f.box[0] for f in choice.chosen] == [0, 300]  # largest first
    assert choice.counts == FaceCounts(
        7, 2, {"low_score": 2, "implausible": 1, "too_small": 1, "over_cap": 1}
    )
    assert choice.counts.found == choice.counts.judged + sum(choice.counts.skipped.values())


def test_counts_add_up_over_frames_in_reason_order() -> None:
    a = FaceCounts(3, 1, {"over_cap": 2})
    b = FaceCounts(2, 1, {"too_small": 1})
    assert a + b == FaceCounts(5, 2, {"too_small": 1, "over_cap": 2})
    assert list((a + b).skipped) == ["too_small", "over_cap"]


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        (FRONTAL, True),
        (None, True),  # a detector without landmarks is screened by score and size only
        (((70.0, 35.0), (30.0, 35.0), (50.0, 55.0), (35.0, 75.0), (65.0, 75.0)), False),  # eyes swapped
        (((30.0, 80.0), (70.0, 80.0), (50.0, 55.0), (35.0, 40.0), (65.0, 40.0)), False),  # upside down
        (((48.0, 35.0), (52.0, 35.0), (50.0, 55.0), (35.0, 75.0), (65.0, 75.0)), False),  # eyes together
        (((-10.0, 35.0), (30.0, 35.0), (10.0, 55.0), (-5.0, 75.0), (25.0, 75.0)), True),  # cut by the border
        (((30.0, 35.0), (70.0, 35.0), (50.0, 20.0), (35.0, 75.0), (65.0, 75.0)), False),  # nose over eyes
        (((30.0, 35.0), (70.0, 35.0), (50.0, 90.0), (35.0, 75.0), (65.0, 75.0)), False),  # nose under mouth
    ],
)
def test_landmark_sanity(points, expected: bool) -> None:  # type: ignore[no-untyped-def]
    assert plausible(face(0, 100, landmarks=points)) is expected


class Fixed:
    """A face detector that answers the same faces for every image."""

    version = "fixed"

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        return [list(self.faces) for _ in images]


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["auto", "require"])
def test_a_verdict_says_how_many_faces_were_found_judged_and_skipped(tmp_path, mode: str) -> None:  # type: ignore[no-untyped-def]
    model = load_classifier(str(save_tiny_vit(tmp_path / "m", DEEPFAKE_REAL)))
    crowd = [face(20 + 110 * k, 100) for k in range(5)] + [face(600, 16), face(700, 60, score=0.8)]
    policy = FacePolicy(mode, Fixed(crowd), max_faces=3, min_face_px=24, min_score=0.9)
    judge = Judge(model, sources=SourcePolicy(), images=ImagePolicy(), faces=policy)
    try:
        crowded = judge.judge_bytes(_png((800, 200)), source="crowd.png")
        policy_small = FacePolicy(mode, Fixed([face(0, 16)]), max_faces=3, min_face_px=24, min_score=0.9)
        tiny = Judge(model, sources=SourcePolicy(), images=ImagePolicy(), faces=policy_small)
        try:
            small = tiny.judge_bytes(_png((200, 200)), source="small.png")
        finally:
            tiny.close()
    finally:
        judge.close()
    assert crowded.done and len(crowded.faces) == 3
    assert (crowded.faces_found, crowded.faces_judged) == (7, 3)
    assert crowded.faces_skipped == {"low_score": 1, "too_small": 1, "over_cap": 2}
    out = crowded.output()
    assert (out["faces_found"], out["faces_judged"], out["faces_skipped"]) == (7, 3, crowded.faces_skipped)
    # One face, too small: auto judges the whole image, require answers not_applicable; both say why.
    assert (small.faces_found, small.faces_judged, small.faces_skipped) == (1, 0, {"too_small": 1})
    assert small.label == ("not_applicable" if mode == "require" else small.label)
    assert small.judged_on == "image"


def test_faces_off_has_no_counts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = load_classifier(str(save_tiny_vit(tmp_path / "m", DEEPFAKE_REAL)))
    judge = Judge(model, sources=SourcePolicy(), images=ImagePolicy())
    try:
        verdict = judge.judge_bytes(_png((64, 64)), source="a.png")
    finally:
        judge.close()
    assert verdict.done and verdict.faces_found is None and verdict.output()["faces_skipped"] is None


def test_a_crowd_of_real_faces_says_how_many_were_found_judged_and_over_the_cap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("skimage", reason="the crowd is scikit-image's lfw_subset (dev extra)")
    from tests.fixtures.faces import lfw_crowd
    from worker.inference.faces.crops import load_face_detector

    crowd = lfw_crowd(30, 48)  # 30 real faces (LFW), 48 px each, in one image of 528x336
    buf = io.BytesIO()
    crowd.image.save(buf, "PNG")
    model = load_classifier(str(save_tiny_vit(tmp_path / "m", DEEPFAKE_REAL)))
    policy = FacePolicy(
        "auto", load_face_detector("mtcnn", "cpu"), max_faces=16, min_face_px=24, min_score=0.9
    )
    judge = Judge(model, sources=SourcePolicy(), images=ImagePolicy(), faces=policy)
    try:
        verdict = judge.judge_bytes(buf.getvalue(), source="crowd.png")
    finally:
        judge.close()
    assert verdict.done and verdict.judged_on == "faces"
    assert verdict.faces_found is not None and verdict.faces_skipped is not None
    assert verdict.faces_found >= 27  # the detector finds nearly all of them (bench/real_faces.py)
    assert verdict.faces_judged == len(verdict.faces) == 16
    assert verdict.faces_found == 16 + sum(verdict.faces_skipped.values())
    assert verdict.faces_skipped["over_cap"] >= 10  # nothing dropped silently
