"""`dfscan scan` looks near-duplicates up as the worker does: a re-encoded, scaled copy of a photo scanned
in an earlier run is answered from that run's verdict, a bank entry is reported as a match, and
``--no-near-duplicates`` judges every source (docs/near-duplicates.md)."""

from __future__ import annotations

import io
import sqlite3
import uuid
from pathlib import Path

from PIL import Image
from skimage import data as skdata

from tests.e2e.test_scan_cli import dfscan, json_rows, model  # noqa: F401


def _save(image: Image.Image, path: Path, quality: int) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())
    return path


def _scan(tmp_path: Path, model: Path, path: Path, *flags: str) -> dict:  # noqa: F811
    run = dfscan("scan", str(path), "--model", str(model), "--format", "json", *flags, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    (row,) = json_rows(run.stdout)
    assert row["status"] == "done", row
    return row


def test_a_rescan_of_a_reencoded_copy_is_answered_from_the_earlier_verdict(
    tmp_path: Path,
    model: Path,  # noqa: F811
) -> None:
    photo = Image.fromarray(skdata.chelsea()).convert("RGB")
    original = _save(photo, tmp_path / "original.jpg", 90)
    small = photo.resize((photo.width * 3 // 4, photo.height * 3 // 4), Image.Resampling.BICUBIC)
    # each scan gets bytes of its own: the exact-bytes cache would answer a repeat before any look-up
    copy, copy2, copy3 = (_save(small, tmp_path / f"copy{q}.jpg", q) for q in (50, 55, 45))
    other = _save(Image.fromarray(skdata.astronaut()).convert("RGB"), tmp_path / "other.jpg", 90)

    first = _scan(tmp_path, model, original)
    assert first["near_duplicate_of"] is None and first["matches"] == []
    again = _scan(tmp_path, model, copy)
    assert again["near_duplicate_of"] == first["job_id"], again
    assert 0 <= again["near_distance"] <= 31 and again["fake_score"] == first["fake_score"]
    judged = _scan(tmp_path, model, copy2, "--no-near-duplicates")
    assert judged["near_duplicate_of"] is None and judged["matches"] == []
    unrelated = _scan(tmp_path, model, other)
    assert unrelated["near_duplicate_of"] is None
    with sqlite3.connect(tmp_path / "dfscan.db") as db:
        infer = {str(uuid.UUID(j)): ms for j, ms in db.execute("select job_id, infer_ms from verdicts")}
    assert not infer[again["job_id"]], "the near-duplicate went through the model"
    assert infer[judged["job_id"]] > 0 and infer[first["job_id"]] > 0

    # a bank of known media, built from the first job: reported as a match
    assert dfscan("banks", "create", "known", cwd=tmp_path).returncode == 0
    added = dfscan("banks", "add", "known", "--from-job", first["job_id"], cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    matched = _scan(tmp_path, model, copy3)
    assert [m["bank"] for m in matched["matches"]] == ["known"], matched
