"""Where a threshold holds: the serving road a model version's threshold was measured on, and the check
that it is the road the version will be served on.

A threshold is a point on the score distribution of one road: the same checkpoint scores a whole image
and its face crops differently, so a threshold measured on whole images means nothing on faces. The
road is recorded with every calibration (``dfscan evaluate``'s report, a training run's registry
entry, ``dfscan models calibrate``) and compared with the serving settings at ``dfscan models promote``.

Standard library and settings only: the CLI checks a promotion without importing torch.
"""

from __future__ import annotations

from typing import Any

from dfscan.settings import Settings

# What must match between a version's calibration and the serving road for its threshold to hold:
# everything recorded that changes a score. With faces on, what is judged: the mode, the detector, the
# margin the crops are cut with, and which faces are kept (the size floor, the minimum detector score
# and the cap: an image's score is the maximum over its kept faces, or its whole image when none is
# kept). In every mode, the numerics: int8 quantisation, and the precision when DFSCAN_PRECISION names
# one (``auto`` resolves on the worker's device, unknown where a promotion runs; the model version's
# +bf16/+fp16 suffix names it). Not compared, because they do not move a score by more than 1e-5: the
# runtime (ONNX Runtime computes torch's fp32 scores within 1e-5, tested) and the device in fp32;
# the detector's weights version, because a detector name ships its own weights.
FACE_KEYS = ("faces", "detector", "margin", "min_face_px", "max_faces", "min_face_score")
NUMERIC_KEYS = ("int8", "precision")
ROAD_KEYS = FACE_KEYS + NUMERIC_KEYS


def serving_faces(settings: Settings, trained_on: dict[str, Any] | None = None) -> dict[str, Any]:
    """The faces part of the serving road for a version: ``DFSCAN_FACES`` with the serving detector and
    margin; a version trained on face crops (``trained_on``: its registry ``params["faces"]``) is served
    on faces with the detector and margin it was trained with, even when DFSCAN_FACES is off."""
    mode = settings.faces
    name, margin = settings.fixed("face_detector"), settings.face_margin
    if trained_on:
        mode = "auto" if mode == "off" else mode
        name = str(trained_on.get("detector", name))
        margin = float(trained_on.get("margin", margin))
    if mode == "off":
        return {"faces": "off"}
    return {"faces": mode, "detector": name, "margin": margin}


def serving_road(settings: Settings, trained_on: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of the serving road a promotion checks (:data:`ROAD_KEYS`): :func:`serving_faces`, the
    face limits when faces are on, int8, and the precision when the settings name one."""
    road = serving_faces(settings, trained_on)
    if road["faces"] != "off":
        road.update(
            min_face_px=settings.min_face_px,
            max_faces=settings.max_faces,
            min_face_score=settings.min_face_score,
        )
    road["int8"] = settings.int8
    if settings.precision != "auto":
        road["precision"] = settings.precision
    return road


def road_mismatch(calibration: dict[str, Any] | None, serving: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (calibrated, serving)}`` for each :data:`ROAD_KEYS` entry that differs; empty when the
    threshold was measured on the serving road, or when no calibration was recorded. The faces mode is
    always compared; another key only when both roads name it (faces off has no face keys; a record
    written before a key was recorded is not refused over it; ``auto`` precision is not named)."""
    if not calibration:
        return {}
    keys = ROAD_KEYS if serving.get("faces") != "off" else ("faces", *NUMERIC_KEYS)
    return {
        k: (calibration.get(k), serving.get(k))
        for k in keys
        if (k == "faces" or (k in calibration and k in serving)) and calibration.get(k) != serving.get(k)
    }


def describe(mismatch: dict[str, tuple[Any, Any]]) -> str:
    """``faces: calibrated off, serving auto`` for each differing key."""
    return "; ".join(f"{k}: calibrated {a!r}, serving {b!r}" for k, (a, b) in mismatch.items())
