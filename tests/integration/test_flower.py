"""Flower against the real broker: per-image `dfscan.scan` tasks, basic auth, and no start without it."""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def running_flower(
    service: Service,  # noqa: F811
    user: str = USER,
    password: str = PASSWORD,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[int]:
    """`dfscan flower` on a free port with these credentials; yields the port once it answers."""
    port = free_port()
    log = service.tmp / f"flower-{port}.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dfscan.cli.main", "flower", "--port", str(port)],
            env={
                **service.env,
                "DFSCAN_FLOWER_USER": user,
                "DFSCAN_FLOWER_PASSWORD": password,
                **(env or {}),
            },
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"flower exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if get(port, "/healthcheck", auth=(user, password))[0] == 200:
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


@pytest.fixture
def flower(service: Service) -> Iterator[int]:  # noqa: F811
    """`dfscan flower` on a free port, started before any worker so it sees every task event."""
    with running_flower(service) as port:
        yield port


def test_flower_shows_each_image_as_a_succeeded_scan_task(service: Service, flower: int) -> None:  # noqa: F811
    # Flower's event receiver must be connected before the tasks run: Redis does not keep events.
    time.sleep(1.0)
    service.start_worker(env={"DFSCAN_TASK_EVENTS": "true"})  # off by default: they cost CPU per message
    paths = write_images(service.images, 5)
    producer = settings_for(service).model_copy(update={"task_events": True})  # the sent events
    sub = ScanClient(producer).submit([str(path) for path in paths])
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


# --- hardening: credentials Flower would split, every path behind auth, loopback by default ----------

EVERY_PATH = (
    "/", "/workers", "/tasks", "/broker", "/api/workers", "/api/tasks", "/api/queues/length", "/metrics",
    "/healthcheck", "/static/css/flower.css", "/login", "/no/such/page",
)  # fmt: skip


def test_every_path_needs_the_credential_including_metrics_and_healthcheck(flower: int) -> None:
    for path in EVERY_PATH:
        for auth in (None, (USER, "wrong"), ("x", ""), (USER, PASSWORD[:-1])):
            status, body = get(flower, path, auth=auth)
            assert status == 401, (path, auth, status, str(body)[:200])
    status, metrics = get(flower, "/metrics")
    assert status == 200 and "# HELP" in str(metrics), str(metrics)[:200]
    assert get(flower, "/healthcheck") == (200, "OK")
    # The 401 asks for basic auth, so a browser prompts for it.
    request = urllib.request.Request(f"http://127.0.0.1:{flower}/metrics")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.headers["WWW-Authenticate"] == 'Basic realm="dfscan flower"'


def test_a_password_with_a_comma_is_one_credential_not_two(service: Service) -> None:  # noqa: F811
    password = "C0rrect-Horse,x"
    with running_flower(service, user="admin", password=password) as port:
        assert get(port, "/api/workers", auth=("admin", password))[0] == 200
        assert get(port, "/metrics", auth=("admin", password))[0] == 200
        # What Flower's comma split used to let in: the first half, and a bare "x".
        assert get(port, "/api/workers", auth=("admin", "C0rrect-Horse"))[0] == 401
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"x").decode())
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 401


def test_flower_ignores_credentials_from_its_own_env_and_config_file(
    service: Service,  # noqa: F811
    tmp_path: Path,
) -> None:
    (tmp_path / "flowerconfig.py").write_text('basic_auth = ["intruder:from-config"]\naddress = "0.0.0.0"\n')
    env = {"FLOWER_BASIC_AUTH": "intruder:from-env", "FLOWER_UNAUTHENTICATED_API": "true"}
    with running_flower(service, env=env, cwd=tmp_path) as port:
        assert get(port, "/api/workers", auth=("intruder", "from-env"))[0] == 401
        assert get(port, "/api/workers", auth=("intruder", "from-config"))[0] == 401
        assert get(port, "/api/workers", auth=None)[0] == 401
        assert get(port, "/api/workers")[0] == 200
        assert _listening_on(port) == {"127.0.0.1"}


def _listening_on(port: int) -> set[str]:
    """The local addresses with a TCP listener on ``port`` (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if width == 8:
                found.add(".".join(str(b) for b in raw[::-1]))
            else:
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                found.add(str(ipaddress.IPv6Address(b"".join(words))))
    return found


def test_flower_binds_loopback_by_default_and_the_setting_widens_it(service: Service) -> None:  # noqa: F811
    with running_flower(service) as port:
        assert _listening_on(port) == {"127.0.0.1"}
    with running_flower(service, env={"DFSCAN_FLOWER_ADDRESS": "0.0.0.0"}) as port:
        assert _listening_on(port) == {"0.0.0.0"}
        assert get(port, "/healthcheck", auth=None)[0] == 401


# One process proves the refusal reaches the command (exit 2, nothing listening); every rule is a unit test
# (tests/unit/test_flower_credentials.py), without a process each.
@pytest.mark.parametrize(
    ("user", "password", "says"),
    [("admin", "\t \n", "DFSCAN_FLOWER_PASSWORD is blank or only whitespace")],
)
def test_flower_refuses_blank_whitespace_and_unusable_credentials(
    service: Service,  # noqa: F811
    tmp_path: Path,
    user: str,
    password: str,
    says: str,
) -> None:
    port = free_port()
    run = subprocess.run(
        [sys.executable, "-m", "dfscan.cli.main", "flower", "--port", str(port)],
        env={**service.env, "DFSCAN_FLOWER_USER": user, "DFSCAN_FLOWER_PASSWORD": password},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "CONFIG_ERROR" in run.stderr and says in run.stderr, run.stderr
    with pytest.raises(OSError):
        get(port, "/healthcheck", auth=None)


def test_the_compose_healthcheck_passes_against_a_real_flower(service: Service, flower: int) -> None:  # noqa: F811
    import yaml

    compose = yaml.safe_load((Path(__file__).parents[2] / "docker" / "compose.yaml").read_text())
    test = compose["services"]["flower"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3].replace("127.0.0.1:5555", f"127.0.0.1:{flower}")
    env = {**service.env, "DFSCAN_FLOWER_USER": USER, "DFSCAN_FLOWER_PASSWORD": PASSWORD}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=30).returncode == 0
    wrong = {**env, "DFSCAN_FLOWER_PASSWORD": "wrong"}
    assert (
        subprocess.run([sys.executable, "-c", code], env=wrong, timeout=30, capture_output=True).returncode
        != 0
    )
