"""A second opinion: a second checkpoint judges every still image whole, through the first model's
batcher; the verdict keeps the first model's score and label and adds the second score with the
combined reading (mean, or inconclusive beyond DFSCAN_SECOND_DISAGREEMENT)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfscan.verdicts import INCONCLUSIVE, SecondOpinion, Stored, Verdict, combine
from tests.fixtures.models import (
    DEEPFAKE_REAL,
    REALISM_DEEPFAKE,
    save_opposite_twin,
    save_reversed_twin,
    save_tiny_vit,
)
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge, Known
from worker.inference.model.batcher import PRIMARY, DynamicBatcher
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.model.preprocess import load_pixels
from worker.inference.sources.read import SourcePolicy

IMAGES = ImagePolicy()


def test_the_combine_rule() -> None:
    far = combine(0.8, 0.2, threshold=0.5, max_disagreement=0.5, model_version="b")
    near = combine(0.7, 0.4, threshold=0.5, max_disagreement=0.5, model_version="b")
    edge = combine(0.75, 0.25, threshold=0.5, max_disagreement=0.5, model_version="b")

    assert (far.combined_label, far.combined_score, far.fake_score) == (INCONCLUSIVE, None, 0.2)
    assert near.combined_score == pytest.approx(0.55) and near.combined_label == "fake"
    assert edge.combined_label == "fake" and edge.combined_score == pytest.approx(0.5)  # 0.5 apart: within
    strict = combine(0.7, 0.4, threshold=0.6, max_disagreement=0.2, model_version="b")
    assert strict.combined_label == INCONCLUSIVE


def test_one_batcher_runs_each_model_on_its_own_inputs() -> None:
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def model(name: str, value: float):  # type: ignore[no-untyped-def]
        def predict(pixels: torch.Tensor) -> list[float]:
            seen[name].append(len(pixels))
            return [value + float(p.mean()) for p in pixels]

        return predict

    batcher = DynamicBatcher(model("a", 0.0), max_batch=8, max_wait=0.2, others={"b": model("b", 0.5)})
    try:
        futures = [
            batcher.submit(torch.full((3, 4, 4), 0.1)),
            batcher.submit(torch.full((3, 6, 6), 0.2), model="b"),  # another size: its own stack
            batcher.submit(torch.full((3, 4, 4), 0.3), model=PRIMARY),
        ]
        assert [round(f.result(timeout=30), 3) for f in futures] == [0.1, 0.7, 0.3]
        with pytest.raises(ValueError, match="no model named 'c'"):
            batcher.submit(torch.zeros(3, 4, 4), model="c")
    finally:
        batcher.close()
    assert sum(seen["a"]) == 2 and sum(seen["b"]) == 1


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Classifier]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    first = save_tiny_vit(root / "first", DEEPFAKE_REAL, seed=2, head_scale=30.0)
    # Another size and label convention: a second opinion has its own preprocessing and names.
    other = save_tiny_vit(
        root / "other", REALISM_DEEPFAKE, seed=5, image_size=48, patch_size=16, head_scale=3.0
    )
    return {
        "first": load_classifier(str(first)),
        "same": load_classifier(str(save_reversed_twin(first, root / "same"))),
        "opposite": load_classifier(str(save_opposite_twin(first, root / "opposite"))),
        "other": load_classifier(str(other)),
    }


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)).save(path, "JPEG")
    return path


def _judge(first: Classifier, root: Path, second: Classifier | None, known: Known | None = None) -> Judge:
    return Judge(
        first,
        sources=SourcePolicy(allowed_roots=(root,)),
        images=IMAGES,
        second=second,
        known=known,
        batch_size=4,
    )


def _direct(model: Classifier, path: Path) -> float:
    pixels, _ = load_pixels(path.read_bytes(), model.preprocess, IMAGES)
    return model.predict(pixels.unsqueeze(0))[0]


def test_the_verdict_shows_both_scores_and_keeps_the_first(
    tmp_path: Path, models: dict[str, Classifier]
) -> None:
    path = _image(tmp_path / "a.jpg", 1)
    alone, paired = (
        _judge(models["first"], tmp_path, None),
        _judge(models["first"], tmp_path, models["other"]),
    )
    try:
        one, two = alone.judge(str(path)), paired.judge(str(path))
        stats = paired.batcher.stats
    finally:
        alone.close()
        paired.close()

    assert one.done and two.done, (one.error, two.error)
    assert two.fake_score == one.fake_score and two.label == one.label  # the first model's, unchanged
    assert one.second_opinion is None
    opinion = two.second_opinion
    assert opinion is not None
    assert opinion.fake_score == pytest.approx(_direct(models["other"], path), abs=1e-5)
    assert opinion.model_version == models["other"].version
    assert two.model_version == f"{one.model_version}+second:{models['other'].version}:d=0.5"
    assert opinion == combine(
        one.fake_score,
        opinion.fake_score,
        threshold=0.5,
        max_disagreement=0.5,
        model_version=opinion.model_version,
    )
    assert stats.items == 2  # both models' inputs went through the one batcher
    assert two.output()["second_opinion"]["combined_label"] == opinion.combined_label


def test_agreeing_models_combine_and_opposite_ones_are_inconclusive(
    tmp_path: Path, models: dict[str, Classifier]
) -> None:
    paths = [_image(tmp_path / f"{k}.jpg", k) for k in range(3)]
    same, opposite = (
        _judge(models["first"], tmp_path, models["same"]),
        _judge(models["first"], tmp_path, models["opposite"]),
    )
    try:
        agreed = [same.judge(str(p)) for p in paths]
        split = [opposite.judge(str(p)) for p in paths]
    finally:
        same.close()
        opposite.close()

    for verdict in agreed:
        opinion = verdict.second_opinion
        assert opinion is not None and verdict.fake_score is not None
        assert opinion.fake_score == pytest.approx(verdict.fake_score, abs=1e-5)
        assert opinion.combined_label == verdict.label
    decisive = [v for v in split if v.fake_score is not None and abs(v.fake_score - 0.5) > 0.25]
    assert decisive, "the tiny model should be decisive on some image (head_scale=30)"
    for verdict in decisive:
        assert verdict.second_opinion is not None
        assert verdict.second_opinion.combined_label == INCONCLUSIVE
        assert verdict.second_opinion.combined_score is None


def test_the_duplicate_cache_answers_with_the_stored_second_score(
    tmp_path: Path, models: dict[str, Classifier]
) -> None:
    path = _image(tmp_path / "a.jpg", 7)
    stored = Stored(0.9, second_opinion=SecondOpinion("v2", 0.1, None, INCONCLUSIVE, 0.5))
    seen: list[str] = []

    def known(sha: str, version: str) -> Stored:
        seen.append(version)
        return stored

    judge = _judge(models["first"], tmp_path, models["same"], known=known)
    try:
        verdict: Verdict = judge.judge(str(path))
    finally:
        judge.close()
    assert verdict.cached and seen == [judge.version] and "+second:" in seen[0]
    assert verdict.second_opinion is not None and verdict.second_opinion.fake_score == 0.1
    assert verdict.second_opinion.combined_label == INCONCLUSIVE


def test_the_table_shows_the_combined_reading(capsys: pytest.CaptureFixture[str]) -> None:
    from dfscan.cli.output import print_table

    opinion = SecondOpinion("v2", 0.1, None, INCONCLUSIVE, 0.5)
    verdict = Verdict(
        source="a.jpg", status="done", label="fake", fake_score=0.9, threshold=0.5, model_version="m"
    )
    print_table([replace(verdict, second_opinion=opinion).output(), verdict.output()])
    out = capsys.readouterr().out
    assert out.count("with 2nd model: inconclusive") == 1
