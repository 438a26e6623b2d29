"""`dfscan scan` on folders with hostile names: a file name that is not UTF-8, a Unix socket, an
over-long name. Each file gets its own result; none costs the rest of the folder its results."""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_scan_cli import dfscan, json_rows, model  # noqa: F401
from tests.integration.test_service import write_images

BAD = b"caf\xe9-latin1.png"  # Latin-1 bytes: not UTF-8


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "up"
    root.mkdir()
    (root / "deep").mkdir()
    good = write_images(root, 3)
    raw = os.fsencode(root)
    Path(os.fsdecode(raw + b"/" + BAD)).write_bytes(good[0].read_bytes())
    Path(os.fsdecode(raw + b"/deep/\xff\xfe.png")).write_bytes(good[1].read_bytes())
    (root / "100%41.png").write_bytes(good[2].read_bytes())  # a '%' in a UTF-8 name stays as it is
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "socket.png"))
    try:
        yield root
    finally:
        listener.close()


def test_a_non_utf8_name_is_scanned_as_a_file_url_and_the_rest_of_the_folder_too(
    tmp_path: Path,
    folder: Path,
    model: Path,  # noqa: F811
) -> None:
    run = dfscan("scan", "up", "--recursive", "--model", str(model), "--format", "json", cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # the socket failed: exit 1, the others judged
    assert "Traceback" not in run.stderr, run.stderr
    rows = {row["source"]: row for row in json_rows(run.stdout)}
    latin = "file://" + str(tmp_path) + "/up/caf%E9-latin1.png"
    deep = "file://" + str(tmp_path) + "/up/deep/%FF%FE.png"
    expected_sources = {
        latin,
        deep,
        "up/img000.png",
        "up/img001.png",
        "up/img002.png",
        "up/100%41.png",
        "up/socket.png",
    }
    assert set(rows) == expected_sources, sorted(rows)
    for source in expected_sources - {"up/socket.png"}:
        assert rows[source]["status"] == "done", rows[source]
    # The same bytes give the same verdict, whatever the name.
    assert rows[latin]["fake_score"] == rows["up/img000.png"]["fake_score"]
    assert rows[deep]["fake_score"] == rows["up/img001.png"]["fake_score"]
    sock = rows["up/socket.png"]
    assert (sock["status"], sock["error_code"]) == ("failed", "PATH_NOT_ALLOWED"), sock
    assert "not regular" in sock["error"]
    db = sqlite3.connect(tmp_path / "dfscan.db")
    stored = dict(db.execute("select source, state from scan_jobs").fetchall())
    assert stored[latin] == "done" and stored[deep] == "done"
    assert sum(1 for state in stored.values() if state == "done") == 6


def test_a_non_utf8_path_named_on_the_command_line_is_scanned(
    tmp_path: Path,
    folder: Path,
    model: Path,  # noqa: F811
) -> None:
    target = os.fsdecode(b"up/" + BAD)
    run = dfscan("scan", target, "--model", str(model), "--format", "json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    (row,) = json_rows(run.stdout)
    assert row["source"] == "file://" + str(tmp_path) + "/up/caf%E9-latin1.png"
    assert row["status"] == "done", row


def test_an_over_long_name_fails_alone_with_not_found(tmp_path: Path, folder: Path, model: Path) -> None:  # noqa: F811
    long_name = "up/" + "n" * 300 + ".png"
    run = dfscan("scan", long_name, "up/img000.png", "--model", str(model), "--format", "json", cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # one source failed
    rows = {row["source"]: row for row in json_rows(run.stdout)}
    assert (rows[long_name]["status"], rows[long_name]["error_code"]) == ("failed", "FILE_NOT_FOUND"), rows[
        long_name
    ]
    assert "too long" in rows[long_name]["error"]
    assert rows["up/img000.png"]["status"] == "done"
