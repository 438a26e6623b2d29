"""`dfscan evaluate --faces`: judged on face crops as serving judges them; images without a face counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_scan_cli import dfscan
from tests.fixtures.faces import write_face_folder
from tests.fixtures.models import REAL_FAKE, save_tiny_vit

pytest.importorskip("skimage", reason="the scenes need scikit-image's astronaut photo (dev extra)")


def test_evaluate_on_faces_reports_the_images_without_a_face(tmp_path: Path) -> None:
    data = write_face_folder(tmp_path / "data", {"train": 1, "test": 2}, face_free={"test": 2})
    model = save_tiny_vit(tmp_path / "m", REAL_FAKE)
    out = dfscan(
        "evaluate", "--model", str(model), "--data", str(data), "--out", "r", "--faces", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["n"] == 4 and report["no_face"] == 2
    assert "+faces:require:mtcnn-facenet-pytorch-2.6(" in report["model_version"]
    assert "2 without a face (skipped)" in out.stderr
