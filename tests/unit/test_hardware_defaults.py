"""`dfscan worker` picks its GPU defaults from the hardware it finds (mocked here: no GPU on CI): batch
64-256 by the GPU's memory, 2 torch threads, task threads (images in flight) twice the batch; settings
the operator gave always win, and a CPU host keeps the CPU defaults."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dfscan.cli import service
from dfscan.settings import get_settings
from worker.inference import hardware
from worker.inference.hardware import Hardware, gpu_batch_size, probe, serving_defaults


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("DFSCAN_BATCH_SIZE", "DFSCAN_THREADS", "DFSCAN_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _gpu(monkeypatch: pytest.MonkeyPatch, name: str, gib: float, major: int) -> None:
    props = SimpleNamespace(name=name, total_memory=int(gib * 2**30), major=major, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)


def test_probe_reads_the_first_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu(monkeypatch, "NVIDIA H200", 139.8, 9)
    found = probe("auto")
    assert found == Hardware(
        cuda=True, name="NVIDIA H200", memory_gib=pytest.approx(139.8), capability=(9, 0)
    )
    assert probe("cpu") == Hardware(cuda=False)  # DFSCAN_DEVICE=cpu: the GPU is not used
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert probe("auto") == Hardware(cuda=False)


@pytest.mark.parametrize(("gib", "batch"), [(8, 64), (15.9, 64), (16, 128), (24, 128), (40, 256), (141, 256)])
def test_batch_size_follows_the_gpu_memory(gib: float, batch: int) -> None:
    assert gpu_batch_size(gib) == batch
    assert serving_defaults(Hardware(cuda=True, memory_gib=gib)) == {"batch_size": batch, "threads": 2}
    assert serving_defaults(Hardware(cuda=False)) == {}


def test_worker_on_a_gpu_takes_the_gpu_defaults(clean_env: pytest.MonkeyPatch) -> None:
    _gpu(clean_env, "NVIDIA L4", 22.5, 8)
    settings = service.hardware_defaults(get_settings())
    assert settings.batch_size == 128 and settings.threads == 2
    assert get_settings().batch_size == 128  # every reader in the process sees the same values


def test_settings_the_operator_gave_win(clean_env: pytest.MonkeyPatch) -> None:
    _gpu(clean_env, "NVIDIA H100", 80, 9)
    clean_env.setenv("DFSCAN_BATCH_SIZE", "32")
    get_settings.cache_clear()
    settings = service.hardware_defaults(get_settings())
    assert settings.batch_size == 32 and settings.threads == 2


def test_a_cpu_host_keeps_the_cpu_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(hardware, "probe", lambda device="auto": Hardware(cuda=False))
    before = get_settings()
    assert service.hardware_defaults(before) is before
    assert before.batch_size == 8 and before.threads is None


def test_the_worker_keeps_twice_the_batch_in_flight(clean_env: pytest.MonkeyPatch) -> None:
    """run_worker on a mocked H200: the Celery pool gets 2 x 256 task threads (plus the interactive lane's)."""
    _gpu(clean_env, "NVIDIA H200", 139.8, 9)
    seen: dict[str, object] = {}

    class _App:
        def worker_main(self, argv: list[str]) -> None:
            seen["argv"] = argv

    import worker.app

    clean_env.setattr(worker.app, "app", _App())
    clean_env.setattr(service, "_load_model_or_exit", lambda: None)
    clean_env.setattr(service, "limit_queue", lambda queue, threads: seen.setdefault("bulk", threads))
    service.run_worker(
        get_settings(), queues="inference", concurrency=None, sweeper=False, name="t", loglevel="INFO"
    )
    assert seen["bulk"] == 512
    assert f"--concurrency={512 + service.interactive_threads(512)}" in seen["argv"]  # type: ignore[operator]
