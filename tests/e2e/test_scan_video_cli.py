"""`dfscan scan clip.mp4` end to end: the video's verdict, its frames and peak time in the JSON contract,
the table, and the SQLite database (verdicts.media/duration_s/peak_t and verdict_frames)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.e2e.test_scan_cli import dfscan, json_rows
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.videos import hostile_corpus, make_clip

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("models") / "tiny", REAL_FAKE, seed=3)


def test_scan_a_video_prints_and_stores_its_timeline(tmp_path: Path, model: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_clip(width=64, height=48, fps=10, seconds=6.0, gop=10, fake_spans=((2.0, 3.0),)))
    webm = tmp_path / "clip.webm"
    webm.write_bytes(make_clip(container="webm", codec="libvpx-vp9", seconds=2.0))
    bad = tmp_path / "long.mp4"
    bad.write_bytes(hostile_corpus()["ten_hours_16x16"][0])
    env = {"DFSCAN_VIDEO_FRAMES": "12", "DFSCAN_MAX_BYTES": "1000"}  # videos use DFSCAN_MAX_VIDEO_BYTES
    run = dfscan(
        "scan",
        "clip.mp4",
        "clip.webm",
        "long.mp4",
        "--model",
        str(model),
        "--format",
        "json",
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 1, run.stderr  # long.mp4 fails VIDEO_TOO_LONG: exit 1
    rows = {Path(row["source"]).name: row for row in json_rows(run.stdout)}
    row = rows["clip.mp4"]
    assert row["status"] == "done", row
    assert row["media"] == "video" and row["duration_s"] == pytest.approx(6.0, abs=0.01)
    assert len(row["frames"]) == 12
    assert [set(f) for f in row["frames"]] == [{"t", "fake_score", "faces"}] * 12
    times = [f["t"] for f in row["frames"]]
    assert times == sorted(times) and times[0] < 0.6 and times[-1] > 5.4
    assert row["peak_t"] in times
    assert 0 <= row["fake_score"] <= 1 and row["label"] in ("real", "fake")
    assert rows["clip.webm"]["status"] == "done" and rows["clip.webm"]["image_format"] == "MATROSKA"
    assert rows["long.mp4"]["error_code"] == "VIDEO_TOO_LONG" and rows["long.mp4"]["media"] == "video"

    db = sqlite3.connect(tmp_path / "dfscan.db")
    stored = db.execute(
        "select v.media, v.duration_s, v.peak_t, v.fake_score, v.job_id from verdicts v"
        " join scan_jobs j on j.id = v.job_id where j.source like '%clip.mp4'"
    ).fetchone()
    assert stored[:4] == ("video", row["duration_s"], row["peak_t"], row["fake_score"])
    frames = db.execute(
        "select t, fake_score from verdict_frames where job_id = ? order by seq", (stored[4],)
    ).fetchall()
    assert frames == [(f["t"], f["fake_score"]) for f in row["frames"]]
    assert db.execute("select count(*) from verdict_frames").fetchone()[0] == 12 + len(
        rows["clip.webm"]["frames"]
    )

    # wide enough that rich does not fold the label column (the +faces model version is long)
    table = dfscan("scan", "clip.mp4", "--model", str(model), cwd=tmp_path, env={**env, "COLUMNS": "250"})
    assert table.returncode == 0, table.stderr
    assert "video 6.0 s, peak at" in table.stdout


def test_scan_a_video_on_faces_shows_each_frames_faces_and_draws_a_contact_sheet(
    tmp_path: Path, model: Path
) -> None:
    pytest.importorskip("skimage", reason="the clip needs scikit-image's astronaut photo (dev extra)")
    from PIL import Image

    from tests.fixtures.faces import face_clip, matches
    from worker.inference.annotate import sheet_size

    with_face = [True, True, False, True, False, True]
    data, truth = face_clip(with_face, size=(400, 300), face_px=110)
    (tmp_path / "faces.mp4").write_bytes(data)
    env = {"DFSCAN_VIDEO_FRAMES": str(len(with_face))}
    args = ("scan", "faces.mp4", "--model", str(model), "--format", "json", "--faces")
    run = dfscan(*args, "auto", "--annotate", "drawn", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    (row,) = json_rows(run.stdout)
    auto_row = row
    assert row["status"] == "done" and row["media"] == "video" and row["judged_on"] == "faces"
    assert "+faces:auto:" in row["model_version"]
    assert len(row["frames"]) == len(with_face)
    for frame, box in zip(row["frames"], truth, strict=True):
        if box is None:  # auto: judged whole
            assert frame["faces"] == [] and 0 <= frame["fake_score"] <= 1
        else:
            assert len(frame["faces"]) == 1 and matches(tuple(frame["faces"][0]["box"]), box)
            assert frame["fake_score"] == frame["faces"][0]["fake_score"]
            assert frame["faces"][0]["label"] in ("real", "fake")
    (sheet,) = list((tmp_path / "drawn").iterdir())
    assert sheet.name == f"faces-{row['image_sha256'][:8]}.png"
    with Image.open(sheet) as img:
        assert img.size == sheet_size(len(with_face))

    (tmp_path / "empty.mp4").write_bytes(face_clip([False] * 3, size=(400, 300))[0])
    run = dfscan(*args, "require", "empty.mp4", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    row, empty = json_rows(run.stdout)
    assert [f["fake_score"] is not None for f in row["frames"]] == with_face
    assert "+faces:require:" in row["model_version"]
    # no face in any frame: done, not_applicable, no score, every frame unjudged
    assert (empty["status"], empty["label"], empty["fake_score"], empty["peak_t"]) == (
        "done",
        "not_applicable",
        None,
        None,
    )
    assert [f["fake_score"] for f in empty["frames"]] == [None] * 3
    db = sqlite3.connect(tmp_path / "dfscan.db")
    counts = db.execute(
        "select v.model_version, count(f.seq) from verdicts v join verdict_frames f on f.job_id = v.job_id"
        " group by v.job_id order by v.model_version"
    ).fetchall()
    faces = db.execute(
        "select f.faces from verdict_frames f join verdicts v on v.job_id = f.job_id"
        " where v.model_version like '%+faces:auto:%' order by f.seq"
    ).fetchall()
    stored = db.execute(
        "select v.label, v.fake_score, v.media from verdicts v join scan_jobs j on j.id = v.job_id"
        " where j.source like '%empty.mp4'"
    ).fetchall()
    db.close()
    # auto stored every frame; require only the frames that had a face (the empty video: none)
    assert [n for _, n in counts] == [len(with_face), sum(with_face)]
    assert stored == [("not_applicable", None, "video")]
    # each frame's faces stored beside its score (migration 0006); a frame judged whole has none
    assert [None if f is None else json.loads(f)[0]["box"] for (f,) in faces] == [
        None if not f["faces"] else f["faces"][0]["box"] for f in auto_row["frames"]
    ]
