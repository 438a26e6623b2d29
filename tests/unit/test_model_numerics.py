"""The model version records its numerics, bf16 is chosen only where the GPU computes it natively, the
out-of-memory split grows back, and a warm-up forward runs at load. CUDA is mocked: the numerics choice
and the version are plain logic; the bf16 forward itself is measured by bench/gpu.py on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfscan.exceptions import ModelLoadError
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from worker.inference.model import classifier as classifier_module
from worker.inference.model.classifier import GROW_AFTER, Classifier, load_classifier, resolve_precision

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    def emulation_counts(*args: object, **kwargs: object) -> bool:
        raise AssertionError("torch.cuda.is_bf16_supported() also says yes where bf16 is emulated")

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(
        torch.cuda, "get_device_name", lambda device=None: f"GPU sm_{capability[0]}{capability[1]}"
    )
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulation_counts)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((9, 0), "bf16"),
        ((8, 0), "bf16"),
        ((8, 9), "bf16"),
        ((7, 5), "fp16"),
        ((7, 0), "fp16"),
        ((6, 1), "fp16"),
    ],
)
def test_auto_is_bf16_only_on_native_bf16_gpus(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    _gpu(monkeypatch, capability)
    assert resolve_precision("auto", CUDA) == expected
    assert resolve_precision("fp32", CUDA) == "fp32"
    assert resolve_precision("fp16", CUDA) == "fp16"


def test_bf16_on_a_gpu_without_it_and_autocast_on_cpu_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu(monkeypatch, (7, 5))
    with pytest.raises(ModelLoadError, match="no native bf16"):
        resolve_precision("bf16", CUDA)
    for precision in ("bf16", "fp16"):
        with pytest.raises(ModelLoadError, match="CUDA only"):
            resolve_precision(precision, CPU)
    assert resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(ModelLoadError, match="unknown precision"):
        resolve_precision("fp8", CPU)


def test_the_version_names_the_numerics_unless_the_cache_is_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(save_tiny_vit(tmp_path / "m", REAL_FAKE))
    fp32 = load_classifier(path, runtime="torch")
    assert fp32.precision == "fp32" and "+" not in fp32.version  # CPU verdicts keep their version
    # The choice a CUDA load makes, on CPU: only the version and the recorded precision are under test.
    monkeypatch.setattr(classifier_module, "resolve_precision", lambda precision, target: "bf16")
    bf16 = load_classifier(path, runtime="torch")
    assert bf16.precision == "bf16" and bf16.version == fp32.version + "+bf16"
    shared = load_classifier(path, runtime="torch", share_cache_across_precision=True)
    assert shared.precision == "bf16" and shared.version == fp32.version


class _Memory(torch.nn.Module):
    """A model that runs out of memory above ``limit`` images (another process's memory, say)."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, pixel_values: torch.Tensor) -> object:
        self.sizes.append(len(pixel_values))
        if len(pixel_values) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(pixel_values=pixel_values)


def test_the_out_of_memory_split_grows_back_after_forwards_that_fit(tmp_path: Path) -> None:
    loaded = load_classifier(str(save_tiny_vit(tmp_path / "m", REAL_FAKE)), runtime="torch")
    model = _Memory(loaded.model, limit=2)
    clf = Classifier(**{**loaded.__dict__, "model": model})
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    expected = loaded.predict(x)
    assert clf.predict(x) == pytest.approx(expected, abs=1e-6)
    assert clf.max_chunk == 2
    model.limit = 8  # the memory is back
    chunks = [clf.max_chunk]
    for _ in range(3 * GROW_AFTER):  # each call is at least one forward that fits
        clf.predict(x)
        if clf.max_chunk != chunks[-1]:
            chunks.append(clf.max_chunk)
    assert chunks == [2, 4, None]  # doubled after GROW_AFTER forwards that fit, then no limit at the batch
    model.sizes.clear()
    assert clf.predict(x) == pytest.approx(expected, abs=1e-6)
    assert model.sizes == [8]  # one forward for the whole batch again


def test_a_warm_up_forward_runs_at_load_on_request_and_by_default_only_on_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(save_tiny_vit(tmp_path / "m", REAL_FAKE))
    calls: list[int] = []
    monkeypatch.setattr(Classifier, "warm_up", lambda self, batch=1: calls.append(batch))
    load_classifier(path, runtime="torch")
    assert calls == []  # CPU: the first forward costs what the others do
    load_classifier(path, runtime="torch", warm_up=True)
    assert calls == [1]


def test_warm_up_runs_one_forward_of_blank_images(tmp_path: Path) -> None:
    loaded = load_classifier(str(save_tiny_vit(tmp_path / "m", REAL_FAKE)), runtime="torch")
    model = _Memory(loaded.model, limit=99)
    Classifier(**{**loaded.__dict__, "model": model}).warm_up(3)
    assert model.sizes == [3]
