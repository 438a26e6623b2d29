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

# What must match between a version's calibration and the serving road for its threshold to hold: the
# faces mode and how crops are cut. The face cap, size floor and runtime change few scores; these
# change what is judged.
ROAD_KEYS = ("faces", "detector", "margin")


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


def road_mismatch(calibration: dict[str, Any] | None, serving: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (calibrated, serving)}`` for each :data:`ROAD_KEYS` entry that differs; empty when the
    threshold was measured on the serving road, or when no calibration was recorded."""
    if not calibration:
        return {}
    keys = ROAD_KEYS if serving.get("faces") != "off" else ("faces",)
    return {k: (calibration.get(k), serving.get(k)) for k in keys if calibration.get(k) != serving.get(k)}


def describe(mismatch: dict[str, tuple[Any, Any]]) -> str:
    """``faces: calibrated off, serving auto`` for each differing key."""
    return "; ".join(f"{k}: calibrated {a!r}, serving {b!r}" for k, (a, b) in mismatch.items())
