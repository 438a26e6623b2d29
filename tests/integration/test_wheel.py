"""The wheel works outside the checkout: built, installed into a fresh virtual environment in another
folder, it migrates a fresh PostgreSQL database and scans a folder, with no access to this tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
from PIL import Image

from db.migrate import current, head
from tests.fixtures.databases import fresh_postgres_url
from tests.fixtures.models import REAL_FAKE, save_tiny_vit

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_the_wheel_migrates_and_scans_outside_the_checkout(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DFSCAN_", "PYTHON"))}
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        cwd=tmp_path,
        env=clean,
    )
    (wheel,) = dist.glob("dfscan-*.whl")

    # A fresh venv elsewhere. Its dependencies (torch, transformers, ...) come from this venv through a
    # path entry, which adds their folder but runs none of its .pth files: the editable install of the
    # checkout is not visible, only the wheel is.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=clean)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        cwd=tmp_path,
        env=clean,
    )
    dfscan = venv / "bin" / "dfscan"
    assert dfscan.exists()
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import db.migrate as m; print(m.__file__, m.ALEMBIC_DIR)"],
        cwd=tmp_path,
        env=clean,
    )
    assert str(ROOT) not in where and "site-packages" in where, where

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    (images / "notes.txt").write_text("not an image")
    model = save_tiny_vit(tmp_path / "model", REAL_FAKE, image_size=32)

    with fresh_postgres_url() as url:
        env = {**clean, "DFSCAN_DATABASE_URL": url, "DFSCAN_MODEL": str(model), "HF_HUB_OFFLINE": "1"}
        upgraded = subprocess.run(
            [str(dfscan), "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert upgraded.returncode == 0, upgraded.stderr
        assert current(url) == head(), upgraded.stderr
        out = _run([str(dfscan), "scan", str(images), "--format", "json"], cwd=tmp_path, env=env)
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(Path(r["source"]).name for r in rows) == ["0.jpg", "1.jpg", "2.jpg", "notes.txt"]
    by_name = {Path(r["source"]).name: r for r in rows}
    assert by_name["notes.txt"]["error_code"] == "UNSUPPORTED_FORMAT"
    assert all(
        by_name[f"{i}.jpg"]["status"] == "done" and by_name[f"{i}.jpg"]["image_format"] == "JPEG"
        for i in range(3)
    )
