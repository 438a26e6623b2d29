"""docker/healthcheck.py (the images' HEALTHCHECK) against a real broker and a real worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.fixtures.service import Service, service  # noqa: F401

ROOT_SCRIPT = "docker/healthcheck.py"


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, ROOT_SCRIPT, "1.0"], env=env, capture_output=True, text=True, timeout=60
    )


def test_healthy_only_while_a_worker_on_this_host_answers(service: Service) -> None:  # noqa: F811
    before = healthcheck(service.env)
    assert before.returncode == 1, before.stdout + before.stderr
    assert f"no worker on {socket.gethostname()} answered" in before.stderr

    # compose names workers NAME@%h; Celery expands %h to this host's name.
    worker = service.start_worker("--name", "probe@%h")
    up = healthcheck(service.env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.strip() == f"healthy: probe@{socket.gethostname()}"

    worker.kill()
    down = healthcheck(service.env)
    assert down.returncode == 1, down.stdout + down.stderr


def test_unhealthy_when_the_broker_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSCAN_")}
    run = healthcheck({**env, "DFSCAN_BROKER_URL": f"redis://127.0.0.1:{port}/0"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "unhealthy: broker unreachable" in run.stderr and "Connection refused" in run.stderr
