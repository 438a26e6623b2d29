"""fine_tune end to end on a tiny ViT: it learns a real signal, not shuffled labels; cancel, resume, audit files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification

from dfscan.exceptions import TrainingDataError
from tests.fixtures.datasets import write_split_folder
from tests.fixtures.models import save_tiny_vit
from worker.training.augment import AugmentConfig
from worker.training.data import ID2LABEL, LabelledData, load_labelled_data
from worker.training.evaluate import evaluate_model
from worker.training.train import MANIFEST, TrainConfig, TrainHooks, TrainResult, fine_tune, load_base_model

SIZES = {"train": 60, "validation": 20, "test": 50}  # images per class


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(base: Path, out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "base_model": str(base),
        "output_dir": out,
        "learning_rate": 1e-3,
        "num_epochs": 8,
        "train_batch_size": 8,
        "eval_batch_size": 64,
        "logging_steps": 5,
        "early_stopping_patience": None,
        "augment": AugmentConfig(),  # the seed's augmentations, as in production
    }
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("base") / "vit", {0: "cat", 1: "dog"})


@pytest.fixture(scope="module")
def learned(
    base: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, LabelledData, list[dict]]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("learn")
    data = load_labelled_data(write_split_folder(tmp / "data", SIZES, seed=1))
    events: list[dict[str, Any]] = []
    result = fine_tune(_config(base, tmp / "run"), data, hooks=TrainHooks(on_progress=events.append))
    return result, data, events


def test_learns_the_signal_and_publishes_an_auditable_model(learned: tuple) -> None:
    result, data, events = learned
    assert not result.cancelled and result.model_dir is not None
    assert result.metrics["test"]["roc_auc"] >= 0.9, result.metrics["test"]
    assert result.metrics["test"]["n"] == 100
    first, last = result.train_losses[:3], result.train_losses[-3:]
    assert sum(last) / 3 < sum(first) / 3 - 0.2, result.train_losses
    evals = [e for e in events if e["event"] == "evaluate"]
    assert [round(e["epoch"]) for e in evals] == list(range(1, 9))
    assert all(e["max_steps"] == 120 and "eval_roc_auc" in e["metrics"] for e in evals)

    manifest = json.loads((result.model_dir / MANIFEST).read_text())
    assert manifest["data"]["fingerprint"] == data.fingerprint
    assert manifest["id2label"] == {"0": "Real", "1": "Fake"}
    assert manifest["hyperparameters"]["learning_rate"] == 1e-3
    assert manifest["libraries"]["torch"] and manifest["libraries"]["transformers"]
    assert manifest["threshold"]["at_target_fpr_on_validation"] == result.threshold
    assert (result.model_dir / "preprocessor_config.json").is_file()
    for name in ("report.json", "confusion_matrix.png", "roc.png", "classification_report.txt"):
        assert (result.output_dir / "report" / name).is_file()

    # the published model holds the best checkpoint's weights, not the last epoch's
    best = AutoModelForImageClassification.from_pretrained(result.best_checkpoint).state_dict()
    published = AutoModelForImageClassification.from_pretrained(result.model_dir)
    assert published.config.id2label == ID2LABEL
    assert all(torch.equal(best[k], v) for k, v in published.state_dict().items())


def test_serving_path_scores_like_training(learned: tuple) -> None:
    result, data, _ = learned
    metrics = evaluate_model(str(result.model_dir), data.test, batch_size=16, device="cpu")
    assert metrics["n"] == 100 and metrics["skipped"] == 0
    assert metrics["roc_auc"] == pytest.approx(result.metrics["test"]["roc_auc"], abs=0.02)


def test_shuffled_labels_stay_at_chance(base: Path, tmp_path: Path) -> None:
    data = load_labelled_data(write_split_folder(tmp_path / "data", SIZES, seed=1, shuffled=True))
    result = fine_tune(_config(base, tmp_path / "run"), data)
    auc = result.metrics["test"]["roc_auc"]
    assert 0.3 <= auc <= 0.7, auc


def test_cancel_saves_a_checkpoint_and_resume_continues(base: Path, tmp_path: Path) -> None:
    data = load_labelled_data(
        write_split_folder(tmp_path / "data", {"train": 20, "validation": 4, "test": 4})
    )
    steps = iter(range(1000))
    cfg = _config(base, tmp_path / "run", num_epochs=3, augment=None, logging_steps=1)
    cancelled = fine_tune(cfg, data, hooks=TrainHooks(should_cancel=lambda: next(steps) >= 6))  # at step 7
    assert cancelled.cancelled and cancelled.model_dir is None and cancelled.global_step == 7
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-7").is_dir()
    assert not (tmp_path / "run" / "model").exists()

    events: list[dict[str, Any]] = []
    resumed = fine_tune(cfg, data, hooks=TrainHooks(on_progress=events.append), resume=True)
    logged = [e["step"] for e in events if e["event"] == "log"]
    assert logged[0] == 8 and resumed.global_step == 15  # 40 images / 8 = 5 steps per epoch, 3 epochs
    assert not resumed.cancelled and (resumed.model_dir / MANIFEST).is_file()

    other = load_labelled_data(write_split_folder(tmp_path / "other", {"train": 20, "validation": 4}, seed=9))
    with pytest.raises(TrainingDataError, match="cannot resume .* with data"):
        fine_tune(cfg, other, resume=True)


def test_base_with_real_fake_head_is_reordered_by_name(tmp_path: Path) -> None:
    src = save_tiny_vit(tmp_path / "fr", {0: "Deepfake", 1: "Real"}, head_scale=5.0)
    pixels = torch.randn(4, 3, 32, 32)
    before = AutoModelForImageClassification.from_pretrained(src).eval()(pixel_values=pixels).logits
    model = load_base_model(str(src)).eval()
    after = model(pixel_values=pixels).logits
    assert model.config.id2label == ID2LABEL
    assert torch.allclose(after, before[:, [1, 0]])

    fresh = load_base_model(str(save_tiny_vit(tmp_path / "cd", {0: "cat", 1: "dog"}, head_scale=5.0)))
    assert fresh.config.id2label == ID2LABEL
    assert (
        float(fresh.classifier.weight.detach().abs().max()) < 0.2
    )  # re-initialised, not the scaled cat/dog head


def test_undecodable_training_image_is_skipped(base: Path, tmp_path: Path) -> None:
    root = write_split_folder(tmp_path / "data", {"train": 8, "validation": 3, "test": 3})
    truncated = root / "train" / "fake" / "truncated.png"
    good = (root / "train" / "fake" / "00008.png").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])  # passes the header check, fails to decode
    with pytest.raises(OSError):
        Image.open(truncated).load()
    data = load_labelled_data(root, check_images=False)  # the cheap check would catch it; test the fallback
    assert data.unreadable == 0
    result = fine_tune(_config(base, tmp_path / "run", num_epochs=1, augment=None), data)
    assert result.undecodable == 1 and result.model_dir is not None
