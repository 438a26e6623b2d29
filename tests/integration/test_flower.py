"""Flower against the real broker: per-image `dfscan.scan` tasks, basic auth, and no start without it."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfscan.queueing import SCAN_TASK
from producer.client import ScanClient
from tests.fixtures.service import Service, service  # noqa: F401
from tests.integration.test_service import settings_for, write_images

USER, PASSWORD = "ops", "flower-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, *, auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, Any]:
    """GET Flower's API; returns (status, parsed JSON or text)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body


@pytest.fixture
def flower(service: Service) -> Iterator[int]:  # noqa: F811
    """`dfscan flower` on a free port, started before any worker so it sees every task event."""
    port = free_port()
    log = service.tmp / "flower.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dfscan.cli.main", "flower", "--port", str(port)],
            env={**service.env, "DFSCAN_FLOWER_USER": USER, "DFSCAN_FLOWER_PASSWORD": PASSWORD},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"flower exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if get(port, "/healthcheck", auth=None)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"flower not up after 30s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_flower_shows_each_image_as_a_succeeded_scan_task(service: Service, flower: int) -> None:  # noqa: F811
    # Flower's event receiver must be connected before the tasks run: Redis does not keep events.
    time.sleep(1.0)
    service.start_worker()
    paths = write_images(service.images, 5)
    sub = ScanClient(settings_for(service)).submit([str(path) for path in paths])
    sub.wait(60)
    job_ids = {str(job_id) for job_id in sub.job_ids}
    assert len(job_ids) == 5

    deadline = time.monotonic() + 30
    tasks: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, tasks = get(flower, f"/api/tasks?taskname={SCAN_TASK}")
        assert status == 200, tasks
        if job_ids <= {tid for tid, task in tasks.items() if task["state"] == "SUCCESS"}:
            break
        time.sleep(0.5)
    # One Flower task per image, keyed by the job id (the Celery task id is the job id).
    assert job_ids <= set(tasks), f"flower shows {sorted(tasks)}, expected {sorted(job_ids)}"
    for job_id in job_ids:
        task = tasks[job_id]
        assert task["name"] == SCAN_TASK
        assert task["state"] == "SUCCESS", task
        assert task["runtime"] is not None and task["runtime"] > 0, task
        # sent (by the producer), received, started, succeeded: the events Flower's rates come from.
        assert task["sent"] and task["received"] and task["started"] and task["succeeded"], task
        assert task["routing_key"] == "inference", task
        assert "'status': 'done'" in task["result"], task
        assert task["worker"].startswith("dfscan-inference@"), task
        assert job_id in task["kwargs"], task

    status, info = get(flower, f"/api/task/info/{next(iter(job_ids))}")
    assert status == 200 and info["state"] == "SUCCESS" and info["name"] == SCAN_TASK

    status, workers = get(flower, "/api/workers?refresh=1")
    assert status == 200
    assert any(name.startswith("dfscan-inference@") for name in workers), workers


def test_flower_api_refuses_requests_without_or_with_wrong_credentials(flower: int) -> None:
    status, body = get(flower, "/api/tasks", auth=None)
    assert status == 401, body
    status, _ = get(flower, "/api/workers", auth=(USER, "wrong"))
    assert status == 401
    status, _ = get(flower, "/api/tasks", auth=(USER, PASSWORD))
    assert status == 200


def test_flower_does_not_start_without_a_password(service: Service, tmp_path: Path) -> None:  # noqa: F811
    env = {**service.env, "DFSCAN_FLOWER_PASSWORD": ""}
    run = subprocess.run(
        [sys.executable, "-m", "dfscan.cli.main", "flower", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,  # no .env file that could supply a password
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "CONFIG_ERROR" in run.stderr
    assert "set DFSCAN_FLOWER_PASSWORD" in run.stderr
