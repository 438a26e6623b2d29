"""Calibration on the serving road: `dfscan evaluate` judges as serving does (DFSCAN_FACES), records the
road, and a version is promoted only with a threshold measured on the road it will serve on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from db import migrate, registry
from db.session import new_engine, new_session_factory
from tests.e2e.test_scan_cli import dfscan
from tests.fixtures.faces import write_face_folder
from tests.fixtures.models import REAL_FAKE, save_tiny_vit

pytest.importorskip("skimage", reason="the scenes need scikit-image's astronaut photo (dev extra)")


def test_the_promoted_threshold_is_the_one_measured_on_the_serving_road(tmp_path: Path) -> None:
    data = write_face_folder(tmp_path / "d", {"plain": 6}, size=(320, 240)) / "plain"  # real/ + fake/
    model = save_tiny_vit(tmp_path / "m", REAL_FAKE, seed=5, head_scale=20.0)
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    env = {"DFSCAN_DATABASE_URL": url}

    def evaluate(*extra: str) -> dict:  # type: ignore[type-arg]
        out = dfscan("evaluate", "--model", str(model), "--data", str(data), *extra, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        return json.loads((tmp_path / extra[-1] / "report.json").read_text())

    whole = evaluate("--faces", "off", "--out", "whole")
    serving = evaluate("--out", "serving")  # DFSCAN_FACES unset: auto, the serving default
    assert whole["split"] == serving["split"] == "all" and serving["n"] == 12  # no split: all of it
    assert whole["road"]["faces"] == "off"
    assert serving["road"]["faces"] == "auto" and serving["road"]["detector"] == "mtcnn"
    assert "+faces:auto:" in serving["model_version"]
    assert whole["threshold_at_fpr"] != serving["threshold_at_fpr"]  # the two roads disagree

    # A version whose threshold was measured on whole images is refused while serving judges faces.
    migrate.upgrade(url)
    engine = new_engine(url)
    with new_session_factory(engine).begin() as s:
        calibration = {**whole["road"], "threshold": whole["threshold_at_fpr"]}
        registry.register_version(
            s,
            "v1",
            source=str(model),
            path=str(model),
            threshold=whole["threshold_at_fpr"],
            calibration=calibration,
        )
    engine.dispose()
    refused = dfscan("models", "promote", "v1", cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert "CALIBRATION_MISMATCH" in refused.stderr and "calibrated 'off', serving 'auto'" in refused.stderr
    assert "dfscan models calibrate v1" in refused.stderr
    # The same version serves whole images without complaint.
    assert dfscan("models", "promote", "v1", cwd=tmp_path, env={**env, "DFSCAN_FACES": "off"}).returncode == 0

    calibrated = dfscan("models", "calibrate", "v1", "--data", str(data), cwd=tmp_path, env=env)
    assert calibrated.returncode == 0, calibrated.stderr
    record = json.loads(calibrated.stdout)
    assert record["faces"] == "auto" and record["judge_version"] == serving["model_version"]
    # Which faces are kept changes scores too: a worker with another face-size floor is refused.
    floor = dfscan("models", "promote", "v1", cwd=tmp_path, env={**env, "DFSCAN_MIN_FACE_PX": "48"})
    assert floor.returncode == 2 and "CALIBRATION_MISMATCH" in floor.stderr, floor.stderr
    assert f"min_face_px: calibrated {record['min_face_px']!r}, serving 48" in floor.stderr
    promoted = dfscan("models", "promote", "v1", cwd=tmp_path, env=env)
    assert promoted.returncode == 0, promoted.stderr
    listed = [
        json.loads(line)
        for line in dfscan("models", "list", "--json", cwd=tmp_path, env=env).stdout.splitlines()
    ]
    (v1,) = [item for item in listed if item["version"] == "v1"]
    assert v1["serving"] and v1["threshold"] == serving["threshold_at_fpr"]  # serving's own measurement
