"""The ONNX Runtime backend: same scores and version as torch in fp32, a cached export, int8, refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from dfscan.exceptions import ModelLoadError
from tests.fixtures.models import CONVENTIONS, REAL_FAKE, save_reversed_twin, save_tiny_vit
from worker.inference.model.classifier import load_classifier
from worker.inference.model.onnx_runtime import OnnxClassifier


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the CPU is shared with other test runs


def _pixels(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 2 - 1


def test_fp32_onnx_scores_like_torch_under_the_same_version(tmp_path: Path) -> None:
    path = str(save_tiny_vit(tmp_path / "m", REAL_FAKE, seed=3, head_scale=20.0))
    torch_detector = load_classifier(path, device="cpu", threads=1)
    onnx_detector = load_classifier(path, device="cpu", threads=1, runtime="onnx", onnx_cache=tmp_path / "c")
    assert isinstance(onnx_detector.model, OnnxClassifier)
    assert onnx_detector.model.session.get_session_options().intra_op_num_threads == 1
    assert onnx_detector.version == torch_detector.version
    assert onnx_detector.device == torch.device("cpu") and not onnx_detector.int8
    for n in (1, 5):  # the export was traced at batch 2: both sizes prove the batch axis is dynamic
        x = _pixels(n, seed=n)
        expected = torch_detector.predict(x)
        scores = onnx_detector.predict(x)
        assert len(scores) == n
        assert scores == pytest.approx(expected, abs=1e-5)
        with torch.inference_mode():
            torch_logits = torch_detector.model(pixel_values=x).logits
            onnx_logits = onnx_detector.model(pixel_values=x).logits
        assert onnx_logits.shape == (n, 2) and onnx_logits.dtype == torch.float32
        assert torch.allclose(onnx_logits, torch_logits, rtol=1e-5, atol=1e-5)
    spread = torch_detector.predict(_pixels(8))
    assert max(spread) - min(spread) > 1e-3  # scores depend on the image: the match is not trivial
    assert onnx_detector.predict(_pixels(0)) == []


def test_the_export_is_cached_per_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    path = str(save_tiny_vit(tmp_path / "m", REAL_FAKE))
    with caplog.at_level(logging.INFO, logger="worker.inference.model.onnx_runtime"):
        first = load_classifier(path, runtime="onnx", onnx_cache=cache)
    exports = [r for r in caplog.records if r.getMessage().startswith("exported ")]
    assert len(exports) == 1 and first.version in exports[0].getMessage()
    (onnx_file,) = cache.glob("*.onnx")
    stamp = onnx_file.stat().st_mtime_ns
    assert onnx_file.stat().st_mode & 0o777 == 0o644 and not list(cache.glob(".*"))  # no temporaries left
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.inference.model.onnx_runtime"):
        second = load_classifier(path, runtime="onnx", onnx_cache=cache)
    assert not [r for r in caplog.records if r.getMessage().startswith("exported ")]
    assert onnx_file.stat().st_mtime_ns == stamp and list(cache.glob("*.onnx")) == [onnx_file]
    assert sorted(p.name for p in cache.iterdir()) == sorted([onnx_file.name, "digests.json"])
    assert isinstance(second.model, OnnxClassifier) and second.model.path == onnx_file
    assert second.predict(_pixels(3)) == first.predict(_pixels(3))
    # Other weights are another version, hence another export next to the first.
    load_classifier(
        str(save_tiny_vit(tmp_path / "other", REAL_FAKE, seed=1)), runtime="onnx", onnx_cache=cache
    )
    assert len(list(cache.glob("*.onnx"))) == 2


def test_int8_onnx_quantises_and_agrees_with_fp32(tmp_path: Path) -> None:
    """Same bounds as torch's int8 test: a random model puts most images in one class, so agreement
    is taken at the fp32 median rather than at 0.5 (which would be trivially 1.0)."""
    cache = tmp_path / "c"
    path = str(save_tiny_vit(tmp_path / "m", REAL_FAKE, seed=0))
    fp32 = load_classifier(path, runtime="onnx", onnx_cache=cache)
    int8 = load_classifier(path, int8=True, runtime="onnx", onnx_cache=cache)
    assert int8.int8 and int8.version == fp32.version + "+int8-onnx"
    assert isinstance(int8.model, OnnxClassifier) and int8.model.path.name.endswith(".int8.onnx")
    ops = _graph_ops(int8.model.path)
    assert "DynamicQuantizeLinear" in ops and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    x = _pixels(64)
    a = torch.tensor(fp32.predict(x), dtype=torch.float64)
    b = torch.tensor(int8.predict(x), dtype=torch.float64)
    assert not torch.equal(a, b)
    correlation = torch.corrcoef(torch.stack([torch.logit(a), torch.logit(b)]))[0, 1].item()
    assert correlation >= 0.97
    median = a.median()
    assert ((a >= median) == (b >= median)).double().mean().item() >= 0.85


def _graph_ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_cuda_with_onnx_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = str(save_tiny_vit(tmp_path / "m", REAL_FAKE))
    with pytest.raises(ModelLoadError) as info:
        load_classifier(path, device="cuda", runtime="onnx", onnx_cache=tmp_path / "c")
    assert info.value.code == "MODEL_LOAD_FAILED"
    assert "onnx runtime is CPU only" in info.value.message and "DFSCAN_DEVICE=cpu" in info.value.message
    with pytest.raises(ModelLoadError, match="unknown runtime 'tensorrt'; use auto, torch or onnx"):
        load_classifier(path, runtime="tensorrt")
    assert not (tmp_path / "c").exists()  # refused before anything was exported


@pytest.mark.parametrize("id2label", CONVENTIONS)
def test_reversed_twin_gives_the_same_p_fake_under_onnx(tmp_path: Path, id2label: dict[int, str]) -> None:
    original = save_tiny_vit(tmp_path / "a", id2label, seed=3, head_scale=20.0)
    twin = save_reversed_twin(original, tmp_path / "b")
    a = load_classifier(str(original), runtime="onnx", onnx_cache=tmp_path / "c")
    b = load_classifier(str(twin), runtime="onnx", onnx_cache=tmp_path / "c")
    assert a.fake_index != b.fake_index
    x = _pixels(8)
    scores_a, scores_b = a.predict(x), b.predict(x)
    assert max(scores_a) - min(scores_a) > 1e-3
    assert scores_a == pytest.approx(scores_b, abs=1e-5)


def test_auto_is_onnx_on_cpu_in_fp32_and_torch_with_int8(tmp_path: Path) -> None:
    path = str(save_tiny_vit(tmp_path / "m", REAL_FAKE, seed=3, head_scale=20.0))
    reference = load_classifier(path, device="cpu", runtime="torch", onnx_cache=tmp_path / "c")
    auto = load_classifier(path, device="auto", runtime="auto", onnx_cache=tmp_path / "c")
    assert isinstance(auto.model, OnnxClassifier) and auto.device == torch.device("cpu")
    assert auto.version == reference.version
    x = _pixels(6)
    assert auto.predict(x) == pytest.approx(reference.predict(x), abs=1e-5)
    int8 = load_classifier(path, runtime="auto", int8=True, onnx_cache=tmp_path / "c")
    assert not isinstance(int8.model, OnnxClassifier) and int8.version == reference.version + "+int8"


def test_a_warm_onnx_start_neither_loads_the_torch_weights_nor_rehashes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.inference.model import classifier as model_module

    path = save_tiny_vit(tmp_path / "m", REAL_FAKE, seed=3, head_scale=20.0)
    cache = tmp_path / "c"
    first = load_classifier(str(path), runtime="auto", onnx_cache=cache)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a warm start must not do this")

    monkeypatch.setattr(model_module, "_load_torch", forbidden)
    monkeypatch.setattr(model_module, "checkpoint_digest", forbidden)
    warm = load_classifier(str(path), runtime="auto", onnx_cache=cache)
    assert isinstance(warm.model, OnnxClassifier) and warm.version == first.version
    assert warm.id2label == first.id2label and warm.preprocess == first.preprocess
    assert (warm.fake_index, warm.real_index) == (first.fake_index, first.real_index)
    assert warm.predict(_pixels(3)) == first.predict(_pixels(3))


def test_the_digest_cache_misses_when_the_weights_change(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    path = save_tiny_vit(tmp_path / "m", REAL_FAKE, seed=0)
    first = load_classifier(str(path), onnx_cache=cache)
    # Other weights written in place under the same name: size and mtime may even match; ctime does not.
    save_tiny_vit(tmp_path / "other", REAL_FAKE, seed=1)
    for name in ("model.safetensors", "config.json"):
        (path / name).write_bytes((tmp_path / "other" / name).read_bytes())
    changed = load_classifier(str(path), onnx_cache=cache)
    assert changed.version != first.version
    assert changed.version == load_classifier(
        str(tmp_path / "other"), onnx_cache=tmp_path / "fresh"
    ).version.replace("other@", "m@")
    # A torn or foreign cache file is ignored, then replaced.
    (cache / "digests.json").write_text("{not json")
    assert load_classifier(str(path), onnx_cache=cache).version == changed.version
    assert json.loads((cache / "digests.json").read_text())[str(path.resolve())]["sha256"]


def test_auto_falls_back_to_torch_when_the_export_fails_and_onnx_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.inference.model import onnx_runtime

    def broken(*args: object, **kwargs: object) -> None:
        raise ModelLoadError("cannot export model m to ONNX (RuntimeError: unsupported op)")

    monkeypatch.setattr(onnx_runtime, "_export", broken)
    path = str(save_tiny_vit(tmp_path / "m", REAL_FAKE))
    with caplog.at_level(logging.WARNING, logger="worker.inference.model.classifier"):
        detector = load_classifier(path, runtime="auto", onnx_cache=tmp_path / "c")
    assert not isinstance(detector.model, OnnxClassifier) and len(detector.predict(_pixels(2))) == 2
    assert any(
        "unsupported op" in r.getMessage() and "torch instead" in r.getMessage() for r in caplog.records
    )
    with pytest.raises(ModelLoadError, match="unsupported op"):
        load_classifier(path, runtime="onnx", onnx_cache=tmp_path / "c")
