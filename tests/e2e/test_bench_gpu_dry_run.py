"""bench/gpu.py --dry-run: every step of the GPU check runs on the CPU at small sizes (CUDA-only measurements
say they were skipped), so the script is known to work before a GPU runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# serial: run alone, after the parallel part of `make test`. Beside another test process on this 2-core
# machine the script's process wedged twice (a thread stuck in munmap, two torch threads spinning), which
# never happened when it ran alone.
@pytest.mark.serial
@pytest.mark.timeout(
    1500
)  # ~1 min on an idle 2-core machine: two `dfscan scan` runs and a few imports of torch
def test_the_dry_run_runs_every_step_and_writes_one_json_and_one_table(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu.py"),
            "--dry-run",
            "--out",
            str(tmp_path),
            "--budget-s",
            "1200",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["dry_run"] is True and report["cuda"] is False
    steps = report["steps"]
    assert set(steps) == {"ceiling", "processes", "scan", "numerics", "memory", "compile"}
    assert not [name for name, step in steps.items() if "error" in step]
    assert [name for name, step in steps.items() if "skipped" in step] == ["compile"]  # CUDA only
    assert steps["ceiling"]["img_per_s"]["fp32"][str(1)] > 0
    assert steps["processes"]["2_processes_img_per_s"] > 0
    for faces in ("off", "auto"):
        scan = steps["scan"][f"faces_{faces}"]
        assert scan["done"] == 16 and scan["img_per_s"] > 0 and scan["cpu_s"] > 0
    assert "faces:auto" in steps["scan"]["faces_auto"]["model_version"]
    assert steps["numerics"]["max_abs_dp"] == 0.0 and steps["numerics"]["images"] == 16
    assert "skipped" in steps["numerics"]["compared"] and "skipped" in steps["memory"]["gpu"]
    table = (tmp_path / "gpu.md").read_text()
    assert "## scan" in table and "## numerics" in table


def test_install_needs_the_dfscan_wheel(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu
    finally:
        sys.path.remove(str(REPO / "bench"))
    with pytest.raises(RuntimeError, match="no dfscan wheel"):
        gpu.install(tmp_path, tmp_path / "site")


def test_a_step_past_the_budget_is_skipped_and_a_failing_one_recorded() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu
    finally:
        sys.path.remove(str(REPO / "bench"))
    run = gpu.Run(budget_s=10)
    assert run.step("late", 60, lambda: {"x": 1}) is None
    run.step("broken", 1, lambda: 1 / 0)
    run.step("fine", 1, lambda: {"x": 1})
    assert "skipped" in run.steps["late"] and "ZeroDivisionError" in run.steps["broken"]["error"]
    assert run.steps["fine"]["x"] == 1
