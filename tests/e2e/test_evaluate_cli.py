"""`dfscan evaluate`: the seed's report plus ROC-AUC, AP, EER and a threshold, for any checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.e2e.test_scan_cli import dfscan
from tests.fixtures.datasets import write_split_folder
from tests.fixtures.models import DEEPFAKE_REAL, save_tiny_vit


def test_evaluate_writes_the_report_json_and_pictures(tmp_path: Path) -> None:
    data = write_split_folder(tmp_path / "data", {"train": 4, "test": 12})
    model = save_tiny_vit(tmp_path / "m", DEEPFAKE_REAL)
    out = dfscan("evaluate", "--model", str(model), "--data", str(data), "--out", "report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "precision" in out.stdout and "Fake" in out.stdout and "Real" in out.stdout  # the seed's table
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n"] == 24  # the data's own test split, 12 per class
    assert report["model_version"].startswith("m@sha256:")
    for key in ("accuracy", "roc_auc", "average_precision", "eer", "threshold_at_fpr", "confusion_matrix"):
        assert key in report, key
    assert sum(map(sum, report["confusion_matrix"])) == 24
    for png in ("confusion_matrix.png", "roc.png"):
        with Image.open(tmp_path / "report" / png) as img:
            assert img.format == "PNG"


def test_evaluate_refuses_data_without_both_classes(tmp_path: Path) -> None:
    (tmp_path / "data" / "real").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "data" / "real" / "a.png")
    (tmp_path / "data" / "cats").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "data" / "cats" / "b.png")
    model = save_tiny_vit(tmp_path / "m", DEEPFAKE_REAL)
    out = dfscan("evaluate", "--model", str(model), "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert out.returncode == 2
    assert "BAD_TRAINING_DATA" in out.stderr and "cats" in out.stderr
