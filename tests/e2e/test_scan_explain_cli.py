"""`dfscan scan --explain --annotate`: a heatmap per judged region in the JSON and in the SQLite results,
drawn on the annotated copy; without the flag, none."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

from tests.e2e.test_scan_cli import dfscan, json_rows
from tests.fixtures.models import REAL_FAKE, save_tiny_vit


def test_scan_explain_adds_a_heatmap_and_annotate_draws_it(tmp_path: Path) -> None:
    model = save_tiny_vit(tmp_path / "tiny", REAL_FAKE, seed=3)  # 32 px inputs, 8 px patches: a 4 x 4 grid
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")

    run = dfscan(
        "scan",
        "in",
        "--model",
        str(model),
        "--format",
        "json",
        "--explain",
        "--annotate",
        "out",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    (row,) = json_rows(run.stdout)
    (heat,) = row["explanation"]
    assert heat["box"] is None and len(heat["grid"]) == 4 and all(len(r) == 4 for r in heat["grid"])
    assert max(max(r) for r in heat["grid"]) == 1.0
    (stored,) = sqlite3.connect(tmp_path / "dfscan.db").execute("SELECT explanation FROM verdicts").fetchall()
    assert json.loads(stored[0]) == row["explanation"]
    drawn = list((tmp_path / "out").iterdir())
    assert len(drawn) == 1

    plain = dfscan("scan", "in", "--model", str(model), "--format", "json", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    (again,) = json_rows(plain.stdout)
    assert again["explanation"] is None and again["fake_score"] == row["fake_score"]
