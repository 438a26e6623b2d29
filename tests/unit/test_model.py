"""Loading checkpoints (label conventions, versions, failures) and the predict() contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from dfscan.exceptions import InferenceError, LabelMappingError, ModelLoadError
from tests.fixtures.models import (
    CONVENTIONS,
    DEEPFAKE_REAL,
    REAL_FAKE,
    REALISM_DEEPFAKE,
    UNMAPPABLE,
    save_reversed_twin,
    save_tiny_vit,
)
from worker.inference.model.classifier import Classifier, load_classifier


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the CPU is shared with other test runs


def _pixels(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 2 - 1


@pytest.mark.parametrize(
    ("id2label", "fake_index", "real_index"),
    [(REAL_FAKE, 1, 0), (DEEPFAKE_REAL, 0, 1), (REALISM_DEEPFAKE, 1, 0)],
)
def test_each_label_convention_maps_by_name(
    tmp_path: Path, id2label: dict[int, str], fake_index: int, real_index: int
) -> None:
    detector = load_classifier(str(save_tiny_vit(tmp_path / "m", id2label)), device="cpu")
    assert (detector.fake_index, detector.real_index) == (fake_index, real_index)
    assert detector.id2label == id2label
    assert detector.device == torch.device("cpu")
    assert detector.preprocess.size == (32, 32)
    scores = detector.predict(_pixels(4))
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize("id2label", CONVENTIONS)
def test_reversed_twin_gives_the_same_p_fake(tmp_path: Path, id2label: dict[int, str]) -> None:
    original = save_tiny_vit(tmp_path / "a", id2label, seed=3, head_scale=20.0)
    twin = save_reversed_twin(original, tmp_path / "b")
    a, b = load_classifier(str(original)), load_classifier(str(twin))
    assert a.fake_index != b.fake_index
    x = _pixels(8)
    scores_a, scores_b = a.predict(x), b.predict(x)
    assert max(scores_a) - min(scores_a) > 1e-3  # the scores depend on the image: not a trivial match
    assert scores_a == pytest.approx(scores_b, abs=1e-6)
    assert a.version != b.version  # different bytes on disk, even if equivalent


def test_p_fake_reads_the_fake_column(tmp_path: Path) -> None:
    detector = load_classifier(str(save_tiny_vit(tmp_path / "m", DEEPFAKE_REAL, seed=1, head_scale=20.0)))
    x = _pixels(5)
    with torch.inference_mode():
        probs = torch.softmax(detector.model(pixel_values=x).logits, dim=-1)
    assert detector.predict(x) == pytest.approx(probs[:, 0].tolist(), abs=1e-6)  # "Deepfake" is index 0


def test_unmappable_labels_fail_at_load(tmp_path: Path) -> None:
    with pytest.raises(LabelMappingError) as info:
        load_classifier(str(save_tiny_vit(tmp_path / "m", UNMAPPABLE)))
    assert info.value.code == "LABEL_MAPPING"
    assert "'cat'" in info.value.message


def test_unreachable_hub_says_to_use_a_local_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_classifier("nobody/does-not-exist")
    assert info.value.code == "MODEL_LOAD_FAILED"
    assert "nobody/does-not-exist" in info.value.message
    assert "DFSCAN_MODEL" in info.value.message


def test_cached_hub_checkpoint_loads_offline_with_its_commit_as_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id already in the Hugging Face cache (the layout hf_hub_download writes) loads offline."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--deepfake-vit"
    save_tiny_vit(repo / "snapshots" / commit, REALISM_DEEPFAKE)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    detector = load_classifier("someone/deepfake-vit")
    assert detector.version == f"hub:someone/deepfake-vit@{commit}"
    assert detector.source == "someone/deepfake-vit"
    assert (detector.fake_index, detector.real_index) == (1, 0)
    assert len(detector.predict(_pixels(2))) == 2


def test_missing_directory_and_non_classifier_fail_to_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="neither a checkpoint directory nor a hub id"):
        load_classifier(str(tmp_path / "missing" / "dir"))
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ModelLoadError, match="no weight file"):
        load_classifier(str(not_a_model))
    from transformers import BertConfig, BertModel

    text = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    ).save_pretrained(text)
    with pytest.raises(ModelLoadError, match="not an image classifier") as info:
        load_classifier(str(text))
    assert info.value.code == "MODEL_LOAD_FAILED"


def test_cuda_without_cuda_fails_clearly(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        load_classifier(str(save_tiny_vit(tmp_path / "m", REAL_FAKE)), device="cuda")


def test_version_follows_the_weights(tmp_path: Path) -> None:
    first = load_classifier(str(save_tiny_vit(tmp_path / "one" / "model", REAL_FAKE, seed=0)))
    same = load_classifier(str(save_tiny_vit(tmp_path / "two" / "model", REAL_FAKE, seed=0)))
    changed = load_classifier(str(save_tiny_vit(tmp_path / "three" / "model", REAL_FAKE, seed=1)))
    assert first.version == same.version
    assert first.version.startswith("model@sha256:") and len(first.version) == len("model@sha256:") + 12
    assert changed.version != first.version
    assert first.source == str(tmp_path / "one" / "model")


def test_predict_rejects_wrong_input_with_a_hint(tmp_path: Path) -> None:
    detector = load_classifier(str(save_tiny_vit(tmp_path / "m", REAL_FAKE)))
    with pytest.raises(InferenceError, match=r"\(N, 3, 32, 32\).*got \(2, 3, 16, 16\).*load_pixels"):
        detector.predict(_pixels(2, size=16))
    with pytest.raises(InferenceError, match=r"got \(3, 32, 32\)"):
        detector.predict(_pixels(1)[0])
    with pytest.raises(InferenceError, match="expected float32 pixels, got torch.float16"):
        detector.predict(_pixels(2).half())
    assert detector.predict(_pixels(0)) == []


class _FlakyMemoryModel(torch.nn.Module):
    """Runs the real model, but raises CUDA's out-of-memory error on batches above ``limit``."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []  # type: ignore[var-annotated]

    def forward(self, pixel_values: torch.Tensor) -> object:
        self.sizes.append(len(pixel_values))
        if len(pixel_values) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(pixel_values=pixel_values)


def test_out_of_memory_halves_the_batch_then_gives_up(tmp_path: Path) -> None:
    detector = load_classifier(str(save_tiny_vit(tmp_path / "m", REAL_FAKE, head_scale=20.0)))
    x = _pixels(5)
    expected = detector.predict(x)
    flaky = _FlakyMemoryModel(detector.model, limit=2)
    halving = Classifier(**{**detector.__dict__, "model": flaky})
    assert halving.predict(x) == pytest.approx(expected, abs=1e-6)
    assert flaky.sizes == [5, 2, 2, 1]  # 5 fails, then chunks of 5 // 2 = 2
    assert halving.max_chunk == 2
    flaky.limit = 0
    with pytest.raises(InferenceError, match="out of device memory on a single image"):
        halving.predict(x)


def test_int8_agrees_with_fp32(tmp_path: Path) -> None:
    """Dynamic int8 must actually quantise, yet rank and split images like fp32 does.

    Measured on this tiny model (seed 0, 64 images): logit correlation 0.991, agreement 0.95 at
    the fp32 median threshold (a random model puts most images in one class, so the 0.5 threshold
    would make agreement trivially 1.0). Thresholds leave room for CPU-kernel differences.
    """
    path = save_tiny_vit(tmp_path / "m", REAL_FAKE, seed=0)
    fp32, int8 = load_classifier(str(path)), load_classifier(str(path), int8=True)
    assert int8.int8 and int8.version == fp32.version + "+int8"
    assert any(isinstance(m, DynamicInt8Linear) for m in int8.model.modules())
    x = _pixels(64)
    a = torch.tensor(fp32.predict(x), dtype=torch.float64)
    b = torch.tensor(int8.predict(x), dtype=torch.float64)
    assert not torch.equal(a, b)
    correlation = torch.corrcoef(torch.stack([torch.logit(a), torch.logit(b)]))[0, 1].item()
    assert correlation >= 0.97
    median = a.median()
    agreement = ((a >= median) == (b >= median)).double().mean().item()
    assert agreement >= 0.85
