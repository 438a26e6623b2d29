"""`dfscan config` shows every setting and never a secret: passwords in URLs and secret settings are masked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_config_prints_no_secret() -> None:
    secrets = {
        "DFSCAN_DATABASE_URL": "postgresql+psycopg2://scanner:pg-S3cret%40x@db.internal:5432/dfscan",
        "DFSCAN_BROKER_URL": "redis://:broker-S3cret@redis.internal:6379/0",
        "DFSCAN_FLOWER_PASSWORD": "flower-S3cret",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSCAN_")} | secrets
    out = subprocess.run(
        [sys.executable, "-m", "dfscan.cli.main", "config"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for needle in ("pg-S3cret", "S3cret%40x", "broker-S3cret", "flower-S3cret", "S3cret"):
        assert needle not in text, f"`dfscan config` printed a secret ({needle})"
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert lines["DFSCAN_DATABASE_URL"] == "postgresql+psycopg2://scanner:***@db.internal:5432/dfscan"
    assert lines["DFSCAN_BROKER_URL"] == "redis://:***@redis.internal:6379/0"
    assert lines["DFSCAN_FLOWER_PASSWORD"] == "**********"
    assert lines["DFSCAN_MODEL"]  # the other settings are still shown
