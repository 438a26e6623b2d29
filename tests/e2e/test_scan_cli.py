"""`dfscan scan` end to end: a folder of good and hostile files, no servers, results in SQLite."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.corpus import make_corpus
from tests.fixtures.models import DEEPFAKE_REAL, REAL_FAKE, save_reversed_twin, save_tiny_vit


def dfscan(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DFSCAN_")}
    base.update({"HF_HUB_OFFLINE": "1", "DFSCAN_THREADS": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "dfscan.cli.main", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("models") / "tiny", REAL_FAKE, seed=3)


def json_rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_scan_gives_each_file_a_verdict_or_its_error_code_and_stores_it(tmp_path: Path, model: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    outside = tmp_path / "outside.png"
    outside.write_bytes((tmp_path / "corpus" / "image.png").read_bytes())
    (tmp_path / "corpus" / "escape.png").symlink_to(outside)
    run = dfscan("scan", "corpus", "--model", str(model), "--format", "json", cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # some sources failed (the hostile ones)
    rows = {Path(row["source"]).name: row for row in json_rows(run.stdout)}
    assert len(rows) == len(corpus) + 1
    for name, (path, expected) in corpus.items():
        row = rows[path.name]
        assert set(row) >= {"source", "status", "label", "fake_score", "model_version", "error_code", "error"}
        if expected is None:
            assert row["status"] == "done", (name, row)
            assert row["label"] in ("real", "fake") and 0 <= row["fake_score"] <= 1
            assert row["model_version"].startswith("tiny@sha256:")
            assert row["error_code"] is None
        else:
            assert row["status"] == "failed" and row["error_code"] == expected, (name, row)
            assert row["label"] is None and row["error"]
    assert (
        rows["escape.png"]["error_code"] == "PATH_NOT_ALLOWED" and rows["escape.png"]["error_detail"] is None
    )
    # One release of overlap: the JSON names the limit and the code a client branched on before.
    assert rows["bomb.png"]["error_detail"] == {"limit": "image_pixels", "former_code": "IMAGE_TOO_LARGE"}
    assert rows["frames.gif"]["error_detail"] == {"limit": "image_frames", "former_code": "IMAGE_TOO_LARGE"}
    done = sum(1 for row in rows.values() if row["status"] == "done")
    assert f"{len(rows)} images" in run.stderr and f"{len(rows) - done} failed" in run.stderr

    db = sqlite3.connect(tmp_path / "dfscan.db")
    states = dict(db.execute("select state, count(*) from scan_jobs group by state").fetchall())
    assert states == {"done": done, "failed": len(rows) - done}
    assert db.execute("select count(*) from verdicts").fetchone()[0] == done
    codes = dict(db.execute("select source, error_code from scan_jobs where state = 'failed'").fetchall())
    assert codes[str(Path("corpus") / "bomb.png")] == "TOO_LARGE"


def test_same_bytes_are_answered_from_the_database_the_second_time(tmp_path: Path, model: Path) -> None:
    make_corpus(tmp_path / "corpus")
    first = json_rows(
        dfscan("scan", "corpus/photo.jpg", "--model", str(model), "--format", "json", cwd=tmp_path).stdout
    )
    second = json_rows(
        dfscan("scan", "corpus/photo.jpg", "--model", str(model), "--format", "json", cwd=tmp_path).stdout
    )
    assert first[0]["cached"] is False and second[0]["cached"] is True
    assert second[0]["fake_score"] == pytest.approx(first[0]["fake_score"])


def test_reversed_labels_give_the_same_p_fake(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    a = save_tiny_vit(tmp_path / "a", DEEPFAKE_REAL, seed=5)
    b = save_reversed_twin(a, tmp_path / "b")
    scores = []
    for ckpt in (a, b):
        out = dfscan(
            "scan",
            "corpus/photo.jpg",
            "corpus/image.png",
            "--model",
            str(ckpt),
            "--format",
            "json",
            cwd=tmp_path,
        )
        scores.append([row["fake_score"] for row in json_rows(out.stdout)])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


def test_table_and_csv_formats_and_recursive(tmp_path: Path, model: Path) -> None:
    make_corpus(tmp_path / "corpus" / "nested")
    flat = dfscan("scan", "corpus", "--model", str(model), cwd=tmp_path)
    assert flat.returncode == 1 and "nothing to scan" in flat.stderr  # only a sub-folder, no --recursive
    table = dfscan("scan", "corpus", "--recursive", "--model", str(model), cwd=tmp_path)
    assert table.returncode == 1, table.stderr  # some sources failed
    assert "TOO_LARGE" in table.stdout and "p(fake)" in table.stdout
    out = dfscan("scan", "corpus", "-r", "--model", str(model), "--format", "csv", cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert rows and {
        "source",
        "status",
        "label",
        "fake_score",
        "model_version",
        "error_code",
        "error",
    } <= set(rows[0])
    assert any(row["error_code"] == "CORRUPT_IMAGE" for row in rows)


def test_urls_to_internal_addresses_are_refused(tmp_path: Path, model: Path) -> None:
    out = dfscan(
        "scan",
        "http://127.0.0.1:9/x.jpg",
        "http://[::1]/a.png",
        "gopher://example.com/",
        "--model",
        str(model),
        "--format",
        "json",
        cwd=tmp_path,
    )
    codes = [row["error_code"] for row in json_rows(out.stdout)]
    assert codes == ["BLOCKED_DESTINATION", "BLOCKED_DESTINATION", "UNSUPPORTED_SOURCE"]


def test_a_label_set_that_cannot_be_mapped_fails_with_a_clear_message(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    bad = save_tiny_vit(tmp_path / "pets", {0: "cat", 1: "dog"})
    out = dfscan("scan", "corpus/photo.jpg", "--model", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert "LABEL_MAPPING" in out.stderr and "'cat'" in out.stderr


def test_an_unreachable_hub_id_tells_the_user_to_use_a_local_directory(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    out = dfscan("scan", "corpus/photo.jpg", cwd=tmp_path)  # the default hub checkpoint, offline here
    assert out.returncode == 2
    assert "MODEL_LOAD_FAILED" in out.stderr and "DFSCAN_MODEL" in out.stderr
