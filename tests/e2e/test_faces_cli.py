"""`dfscan evaluate --faces`: judged on face crops as serving judges them; images without a face counted."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.test_scan_cli import dfscan, json_rows
from tests.fixtures.faces import face_scene, matches, write_face_folder
from tests.fixtures.models import REAL_FAKE, save_tiny_vit

pytest.importorskip("skimage", reason="the scenes need scikit-image's astronaut photo (dev extra)")


def test_evaluate_on_faces_reports_the_images_without_a_face(tmp_path: Path) -> None:
    data = write_face_folder(tmp_path / "data", {"train": 1, "test": 2}, face_free={"test": 2})
    model = save_tiny_vit(tmp_path / "m", REAL_FAKE)
    out = dfscan(
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        "r",
        "--faces",
        "require",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["n"] == 4 and report["no_face"] == 2
    assert "+faces:require:mtcnn-facenet-pytorch-2.6(" in report["model_version"]
    assert "2 without a face (skipped)" in out.stderr


def test_scan_on_faces_shows_and_stores_each_face_and_draws_them(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    two = face_scene([180, 90], seed=7, size=(800, 600), kind="field")
    two.image.save(folder / "two.png")
    face_scene([], seed=8, size=(640, 480), kind="field").image.save(folder / "none.png")
    model = save_tiny_vit(tmp_path / "m", REAL_FAKE)
    env = {"DFSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'scan.db'}"}
    args = (
        "scan",
        str(folder),
        "--model",
        str(model),
        "--format",
        "json",
        "--annotate",
        str(tmp_path / "drawn"),
    )
    out = dfscan(*args, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    rows = {Path(r["source"]).name: r for r in json_rows(out.stdout)}
    assert rows["two.png"]["judged_on"] == "faces" and len(rows["two.png"]["faces"]) == 2
    # Every verdict says what the detector found, what was judged and why the rest were not.
    two_counts = [rows["two.png"][k] for k in ("faces_found", "faces_judged", "faces_skipped")]
    assert two_counts == [2, 2, {}]
    assert rows["none.png"]["faces_found"] == rows["none.png"]["faces_judged"] == 0
    assert all(matches(tuple(f["box"]), t) for f, t in zip(rows["two.png"]["faces"], two.truth, strict=True))
    assert rows["two.png"]["fake_score"] == max(f["fake_score"] for f in rows["two.png"]["faces"])
    assert (rows["none.png"]["judged_on"], rows["none.png"]["faces"]) == (
        "image",
        [],
    )  # auto: the whole image
    assert "+faces:auto:" in rows["two.png"]["model_version"]
    with sqlite3.connect(tmp_path / "scan.db") as db:
        stored = db.execute("SELECT x, y, w, h, fake_score FROM verdict_faces ORDER BY seq").fetchall()
        judged = dict(db.execute("SELECT image_sha256, judged_on FROM verdicts").fetchall())
    assert [list(r[:4]) for r in stored] == [f["box"] for f in rows["two.png"]["faces"]]
    assert sorted(judged.values()) == ["faces", "image"]
    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert len(drawn) == 2 and drawn[0].startswith("none-") and drawn[1].startswith("two-")
    with Image.open(tmp_path / "drawn" / drawn[1]) as img:
        assert img.size == (800, 600)
        x, y, w, h = rows["two.png"]["faces"][0]["box"]
        assert img.convert("RGB").getpixel((x, y + h // 2)) in {(230, 25, 25), (20, 170, 60)}  # the box edge

    # require: the face-free image is done, not_applicable, no score; the table shows the face count
    again = dfscan("scan", str(folder), "--model", str(model), "--faces", "require", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "not_applicable" in again.stdout and "1 without a face (not_applicable)" in again.stderr
    csv_out = dfscan(
        "scan",
        str(folder),
        "--model",
        str(model),
        "--format",
        "csv",
        "--faces",
        "require",
        cwd=tmp_path,
        env=env,
    )
    lines = csv_out.stdout.splitlines()
    header = lines[0].split(",")
    by_name = {
        Path(line.split(",")[0]).name: dict(zip(header, line.split(","), strict=False)) for line in lines[1:]
    }
    assert by_name["two.png"]["n_faces"] == "2" and by_name["none.png"]["label"] == "not_applicable"
    assert by_name["none.png"]["fake_score"] == ""
