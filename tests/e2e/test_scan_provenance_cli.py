"""`dfscan scan` on files that declare their origin: the JSON carries provenance, the table says it in
a few words, the SQLite results keep it, and the score is the model's alone."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.e2e.test_scan_cli import dfscan, json_rows
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.provenance import plain_jpeg, signed_jpeg, tampered


def test_scan_reports_provenance_beside_the_score(tmp_path: Path) -> None:
    model = save_tiny_vit(tmp_path / "tiny", REAL_FAKE, seed=3)
    folder = tmp_path / "in"
    folder.mkdir()
    pixels = plain_jpeg((80, 60), (200, 120, 40))
    signed = signed_jpeg("trainedAlgorithmicMedia", image=pixels)
    (folder / "a_signed.jpg").write_bytes(signed)
    (folder / "b_tampered.jpg").write_bytes(tampered(signed))
    (folder / "c_plain.jpg").write_bytes(pixels)

    run = dfscan("scan", "in", "--model", str(model), "--format", "json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = {Path(row["source"]).name: row for row in json_rows(run.stdout)}
    assert rows["a_signed.jpg"]["provenance"]["signature_valid"] is True
    assert rows["a_signed.jpg"]["provenance"]["declared_ai"] is True
    assert rows["b_tampered.jpg"]["provenance"]["signature_valid"] is False
    assert rows["c_plain.jpg"]["provenance"]["manifest"] is False
    assert rows["c_plain.jpg"]["provenance"]["declared_ai"] is None
    # The manifest rides beside the pixels: the same pixels get the same score with or without it.
    assert rows["a_signed.jpg"]["fake_score"] == rows["c_plain.jpg"]["fake_score"]

    stored = sqlite3.connect(tmp_path / "dfscan.db").execute("SELECT provenance FROM verdicts").fetchall()
    assert sorted(json.loads(p)["manifest"] for (p,) in stored) == [False, True, True]

    table = dfscan("scan", "in", "--model", str(model), cwd=tmp_path, env={"DFSCAN_PROVENANCE": "true"})
    assert table.returncode == 0, table.stderr
    assert "AI (c2pa, signed)" in table.stdout and "AI (c2pa, INVALID signature)" in table.stdout
    off = dfscan(
        "scan",
        "in",
        "--model",
        str(model),
        "--format",
        "json",
        cwd=tmp_path,
        env={"DFSCAN_PROVENANCE": "false"},
    )
    assert all(row["provenance"] is None for row in json_rows(off.stdout))
