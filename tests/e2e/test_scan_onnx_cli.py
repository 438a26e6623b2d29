"""`dfscan scan` with DFSCAN_RUNTIME=onnx: the setting reaches the model, same verdicts and versions as torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.images import write_images
from tests.e2e.test_scan_cli import dfscan
from tests.fixtures.models import REAL_FAKE, save_tiny_vit


@pytest.mark.slow  # the default-runtime test below covers the same scores and cache in the default suite
def test_onnx_scan_matches_torch_and_caches_its_export(tmp_path: Path) -> None:
    model = save_tiny_vit(tmp_path / "tiny", REAL_FAKE, seed=3, head_scale=20.0)
    write_images(tmp_path / "images", 6, seed=0)
    cache = tmp_path / "onnx-cache"
    rows: dict[str, dict[str, dict[str, object]]] = {}
    for runtime in ("torch", "onnx"):
        run = dfscan(
            "scan",
            "images",
            "--model",
            str(model),
            "--format",
            "json",
            cwd=tmp_path,
            env={
                "DFSCAN_RUNTIME": runtime,
                "DFSCAN_ONNX_CACHE": str(cache),
                "DFSCAN_DATABASE_URL": f"sqlite:///{tmp_path / runtime}.db",
            },
        )
        assert run.returncode == 0, run.stderr
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        rows[runtime] = {Path(str(row["source"])).name: row for row in lines}
    assert len(rows["onnx"]) == 6 and rows["onnx"].keys() == rows["torch"].keys()
    scores = []
    for name, expected in rows["torch"].items():
        got = rows["onnx"][name]
        assert got["status"] == expected["status"] == "done"
        assert got["model_version"] == expected["model_version"]
        assert got["fake_score"] == pytest.approx(expected["fake_score"], abs=1e-5)
        assert got["label"] == expected["label"]
        scores.append(float(str(expected["fake_score"])))
    assert max(scores) - min(scores) > 1e-3  # different images, different scores: the match is not trivial
    assert len(list(cache.glob("*.onnx"))) == 1  # the setting reached the loader: the export is there


def test_onnx_on_cuda_is_refused_with_its_code(tmp_path: Path) -> None:
    model = save_tiny_vit(tmp_path / "tiny", REAL_FAKE)
    write_images(tmp_path / "images", 1, seed=0)
    run = dfscan(
        "scan",
        "images",
        "--model",
        str(model),
        cwd=tmp_path,
        env={
            "DFSCAN_RUNTIME": "onnx",
            "DFSCAN_DEVICE": "cuda",
            "DFSCAN_ONNX_CACHE": str(tmp_path / "cache"),
            "DFSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'scan.db'}",
        },
    )
    assert run.returncode != 0
    assert "MODEL_LOAD_FAILED" in run.stderr and "onnx runtime is CPU only" in run.stderr
    assert not (tmp_path / "cache").exists()


def test_the_default_runtime_on_cpu_is_onnx_with_torch_scores_and_a_reused_cache(tmp_path: Path) -> None:
    """No DFSCAN_RUNTIME: the export and the digest cache go to $XDG_CACHE_HOME/dfscan/onnx, the verdicts
    equal torch's, and a second run reuses both (no second export)."""
    model = save_tiny_vit(tmp_path / "tiny", REAL_FAKE, seed=3, head_scale=20.0)
    write_images(tmp_path / "images", 4, seed=0)
    xdg = tmp_path / "xdg"
    runs: dict[str, dict[str, dict[str, object]]] = {}
    for name, env in (
        ("torch", {"DFSCAN_RUNTIME": "torch", "DFSCAN_ONNX_CACHE": str(tmp_path / "elsewhere")}),
        ("default", {"XDG_CACHE_HOME": str(xdg)}),
        ("again", {"XDG_CACHE_HOME": str(xdg)}),
    ):
        run = dfscan(
            "scan",
            "images",
            "--model",
            str(model),
            "--format",
            "json",
            cwd=tmp_path,
            env={**env, "DFSCAN_DATABASE_URL": f"sqlite:///{tmp_path / name}.db"},
        )
        assert run.returncode == 0, run.stderr
        runs[name] = {Path(str(r["source"])).name: r for r in map(json.loads, run.stdout.splitlines())}
        if name == "default":
            (export,) = (xdg / "dfscan" / "onnx").glob("*.onnx")
            stamp = export.stat().st_mtime_ns
            assert (xdg / "dfscan" / "onnx" / "digests.json").is_file()
    assert export.stat().st_mtime_ns == stamp and len(list(export.parent.glob("*.onnx"))) == 1
    assert len(runs["torch"]) == 4
    for name, expected in runs["torch"].items():
        for other in ("default", "again"):
            got = runs[other][name]
            assert got["status"] == "done" and got["model_version"] == expected["model_version"]
            assert got["fake_score"] == pytest.approx(expected["fake_score"], abs=1e-5)
