"""The promote check compares every recorded part of the road that changes a score: the faces mode,
detector and margin, which faces are kept (size floor, minimum score, cap), int8 and a named precision."""

from __future__ import annotations

import pytest

from dfscan.calibration import ROAD_KEYS, describe, road_mismatch, serving_road
from dfscan.settings import Settings

RECORDED = {  # what `dfscan evaluate` records under DFSCAN_FACES=auto on a CPU (worker/training/evaluate.py)
    "faces": "auto",
    "detector": "mtcnn",
    "margin": 0.3,
    "min_face_px": 24,
    "max_faces": 16,
    "min_face_score": 0.9,
    "detector_version": "mtcnn@facenet-pytorch",
    "runtime": "auto",
    "int8": False,
    "device": "cpu",
    "precision": "fp32",
}


def _settings(**changes: object) -> Settings:
    base = {"faces": "auto", "face_margin": 0.3, "min_face_px": 24, "max_faces": 16, "min_face_score": 0.9}
    return Settings(**{**base, **changes})  # type: ignore[arg-type]


def test_the_road_it_was_calibrated_on_is_accepted() -> None:
    assert road_mismatch(RECORDED, serving_road(_settings())) == {}
    # runtime and device are recorded but never refuse: they move no score by more than 1e-5
    assert (
        road_mismatch({**RECORDED, "runtime": "torch", "device": "cuda:0"}, serving_road(_settings())) == {}
    )


@pytest.mark.parametrize(
    ("change", "key", "serving"),
    [
        ({"faces": "require"}, "faces", "require"),
        ({"face_margin": 0.5}, "margin", 0.5),
        ({"min_face_px": 48}, "min_face_px", 48),
        ({"max_faces": 4}, "max_faces", 4),
        ({"min_face_score": 0.8}, "min_face_score", 0.8),
        ({"int8": True}, "int8", True),
        ({"precision": "bf16"}, "precision", "bf16"),
    ],
)
def test_each_part_that_changes_a_score_refuses(change: dict[str, object], key: str, serving: object) -> None:
    mismatch = road_mismatch(RECORDED, serving_road(_settings(**change)))
    assert mismatch == {key: (RECORDED[key], serving)}
    assert f"{key}: calibrated {RECORDED[key]!r}, serving {serving!r}" == describe(mismatch)


def test_faces_off_compares_the_mode_and_the_numerics_only() -> None:
    whole = {"faces": "off", "runtime": "auto", "int8": False, "device": "cpu", "precision": "fp32"}
    assert road_mismatch(whole, serving_road(_settings(faces="off", min_face_px=99))) == {}
    assert road_mismatch(whole, serving_road(_settings(faces="off", int8=True))) == {"int8": (False, True)}
    assert road_mismatch(whole, serving_road(_settings())) == {"faces": ("off", "auto")}


def test_auto_precision_and_older_records_are_not_refused_over_what_they_do_not_name() -> None:
    assert "precision" not in serving_road(_settings())  # auto: resolved on the worker's device
    older = {k: RECORDED[k] for k in ("faces", "detector", "margin")}  # recorded before the face limits
    assert road_mismatch(older, serving_road(_settings(min_face_px=48))) == {}
    assert set(ROAD_KEYS) >= {"faces", "detector", "margin", "min_face_px", "max_faces", "min_face_score"}
