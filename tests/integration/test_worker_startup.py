"""A worker that cannot judge does not start: it exits non-zero with one line before it takes a job.

Caused for real: a model path that does not exist, and a copy of the package whose face detector's
weights (worker/inference/weights/*.pt) are missing, as after a broken install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from db.models import ScanJob
from db.session import new_engine, new_session_factory
from tests.fixtures.service import Service

ROOT = Path(__file__).resolve().parents[2]


def submit_one(svc: Service) -> None:
    Path(svc.images / "one.png").write_bytes(b"")  # never read: no worker gets to it
    run = svc.cli("submit", str(svc.images / "one.png"))
    assert run.returncode == 0, run.stderr


def queued_messages(svc: Service) -> int:
    client = svc.redis()
    return sum(int(client.llen(key)) for key in client.keys("inference*") if client.type(key) == b"list")


def job_states(svc: Service) -> list[tuple[str, int]]:
    sessions = new_session_factory(new_engine(svc.database_url))
    with sessions() as session:
        return [(job.state, job.attempts) for job in session.scalars(select(ScanJob))]


def start_worker(svc: Service, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfscan.cli.main", "worker", "--sweeper"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,  # a ceiling, not a window: the process exits as soon as the load fails
    )


def assert_refused(svc: Service, out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode == 1, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one clear line, no traceback, no warm-up log
    assert lines[0].startswith("error MODEL_LOAD_FAILED: the worker cannot serve: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "ready" not in out.stdout + out.stderr
    # Nothing taken: the message is still on the broker, the job still queued with no attempt spent.
    assert queued_messages(svc) == 1
    assert job_states(svc) == [("queued", 0)]


def test_a_worker_whose_model_path_is_missing_exits_with_one_line_and_takes_no_job(
    service: Service, tmp_path: Path
) -> None:
    submit_one(service)
    assert queued_messages(service) == 1
    missing = tmp_path / "no-such-model"
    out = start_worker(service, {**service.env, "DFSCAN_MODEL": str(missing)}, cwd=tmp_path)
    assert_refused(service, out, str(missing))


def test_a_worker_whose_face_weights_are_missing_exits_with_one_line_and_takes_no_job(
    service: Service, tmp_path: Path
) -> None:
    # The package as installed, less the MTCNN weights; faces are on by default (DFSCAN_FACES=auto).
    tree = tmp_path / "tree"
    for package in ("dfscan", "worker", "producer", "db"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    assert not list((tree / "worker" / "inference" / "weights").glob("*.pt"))
    submit_one(service)
    env = {**service.env, "PYTHONPATH": str(tree)}
    assert "DFSCAN_FACES" not in env
    out = start_worker(service, env, cwd=tree)
    assert_refused(service, out, "pnet.pt, rnet.pt, onet.pt are missing", "DFSCAN_FACES=off")
