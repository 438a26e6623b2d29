"""Report files: a readable JSON, the seed-style text table, and valid PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from worker.training.metrics import evaluate_scores
from worker.training.report import format_classification_report, write_report

Y = [0, 0, 0, 0, 1, 1, 1, 1]
P = [0.1, 0.3, 0.6, 0.8, 0.2, 0.6, 0.7, 0.9]


def test_text_report_matches_the_seed_layout() -> None:
    text = format_classification_report(evaluate_scores(Y, P))
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["Real", "0.6667", "0.5000", "0.5714", "4"]
    assert lines[3].split() == ["Fake", "0.6000", "0.7500", "0.6667", "4"]
    assert lines[5].split() == ["accuracy", "0.6250", "8"]
    assert lines[6].split() == ["macro", "avg", "0.6333", "0.6250", "0.6190", "8"]
    assert "ROC-AUC: 0.6562" in text


def test_write_report_files(tmp_path: Path) -> None:
    metrics = evaluate_scores(Y, P)
    paths = write_report(metrics, tmp_path / "r", y_true=Y, p_fake=P)
    assert json.loads(paths["json"].read_text()) == metrics
    assert "weighted avg" in paths["text"].read_text()
    for key in ("confusion_matrix", "roc"):
        with Image.open(paths[key]) as im:
            assert im.format == "PNG" and im.size[0] >= 300
            im.verify()


def test_one_class_report_says_undefined(tmp_path: Path) -> None:
    metrics = evaluate_scores([0, 0], [0.2, 0.7])
    assert "ROC-AUC: undefined (one class only)" in format_classification_report(metrics)
    paths = write_report(metrics, tmp_path, y_true=[0, 0], p_fake=[0.2, 0.7])
    with Image.open(paths["roc"]) as im:
        assert im.format == "PNG"


def test_without_matplotlib_the_report_names_the_extra_to_install(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    import pytest

    from dfscan.exceptions import ConfigError

    monkeypatch.setitem(
        sys.modules, "matplotlib", None
    )  # what `import matplotlib` meets without the train extra
    metrics = evaluate_scores([0, 1], [0.2, 0.8], threshold=0.5)
    with pytest.raises(ConfigError, match=r"dfscan\[train\]"):
        write_report(metrics, tmp_path / "r", y_true=[0, 1], p_fake=[0.2, 0.8])
