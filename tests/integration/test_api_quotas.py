"""Quotas and retention through the real server: a key over its request rate or its jobs outstanding gets
429 with Retry-After and succeeds after waiting that long; another key is not affected; uploaded bytes
are deleted by the sweeper after DFSCAN_UPLOAD_RETENTION_HOURS unless a job still needs them."""

# ruff: noqa: F811
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.api import start_api
from tests.fixtures.corpus import make_image_bytes
from tests.fixtures.service import Service, service  # noqa: F401

pytestmark = pytest.mark.integration


def _code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_request_rate_429_then_success_after_retry_after(service: Service, tmp_path: Path) -> None:  # noqa: F811
    env = {
        **service.env,
        "DFSCAN_API_RATE_LIMIT": "3/10 seconds",
        "DFSCAN_UPLOAD_STORE": str(tmp_path / "up"),
    }
    server = start_api(env, service.database_url, tmp_path / "api.log")
    try:
        key, other = server.tenant("acme", "read"), server.tenant("globex", "read")
        with server.client(key) as http, server.client(other) as http_other:
            statuses = [http.get("/v1/results").status_code for _ in range(4)]
            assert statuses[:3] == [200, 200, 200] and statuses[3] == 429, statuses
            limited = http.get("/v1/results")
            assert limited.status_code == 429 and _code(limited) == "RATE_LIMITED"
            wait = int(limited.headers["Retry-After"])
            assert 1 <= wait <= 10
            assert http_other.get("/v1/results").status_code == 200  # another key has its own quota
            time.sleep(wait + 0.5)
            assert http.get("/v1/results").status_code == 200
        assert key not in server.text()
    finally:
        server.stop()


def test_jobs_outstanding_429_until_they_finish(service: Service, tmp_path: Path) -> None:  # noqa: F811
    env = {**service.env, "DFSCAN_API_MAX_OUTSTANDING": "2", "DFSCAN_UPLOAD_STORE": str(tmp_path / "up")}
    server = start_api(env, service.database_url, tmp_path / "api.log")
    try:
        key = server.tenant("acme", "submit,read")
        png = [make_image_bytes("PNG", seed=s) for s in range(3)]
        with server.client(key) as http:
            first = http.post(
                "/v1/scans", files=[("file", (f"{i}.png", png[i], "image/png")) for i in range(2)]
            )
            assert first.status_code == 202, first.text
            over = http.post("/v1/scans", files=[("file", ("2.png", png[2], "image/png"))])
            assert over.status_code == 429 and _code(over) == "RATE_LIMITED", over.text
            assert int(over.headers["Retry-After"]) >= 1
            # the refused submission left nothing behind
            assert len(http.get("/v1/results").json()["results"]) == 2
            service.start_worker(env=env)
            deadline = time.monotonic() + 180
            while not http.get(f"/v1/submissions/{first.json()['submission_id']}").json()["done"]:
                assert time.monotonic() < deadline, "jobs never finished"
                time.sleep(0.2)
            again = http.post("/v1/scans", files=[("file", ("2.png", png[2], "image/png"))])
            assert again.status_code == 202, again.text
    finally:
        server.stop()


def test_uploads_are_deleted_after_retention_unless_a_job_needs_them(
    service: Service, tmp_path: Path
) -> None:  # noqa: F811
    store = tmp_path / "up"
    env = {**service.env, "DFSCAN_UPLOAD_STORE": str(store), "DFSCAN_UPLOAD_RETENTION_HOURS": "0.0002"}
    server = start_api(env, service.database_url, tmp_path / "api.log")
    try:
        key = server.tenant("acme", "submit,read")
        with server.client(key) as http:
            accepted = http.post(
                "/v1/scans", files=[("file", ("a.png", make_image_bytes("PNG"), "image/png"))]
            )
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["jobs"][0]["job_id"]
            assert len(list(store.glob("*/*"))) == 1
            time.sleep(1.5)  # past the retention (0.72 s)
            swept = subprocess_sweep(env)
            assert swept.returncode == 0, swept.stderr
            assert len(list(store.glob("*/*"))) == 1, "the upload of a queued job was deleted"
            service.start_worker(env=env)
            deadline = time.monotonic() + 180
            while http.get(f"/v1/jobs/{job_id}").json()["status"] != "done":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            time.sleep(1.0)
            assert subprocess_sweep(env).returncode == 0
            assert list(store.glob("*/*")) == []
            job = http.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "done" and job["label"] in ("real", "fake")  # the verdict stays
    finally:
        server.stop()


def subprocess_sweep(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`dfscan sweeper --once` with ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "dfscan.cli.main", "sweeper", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
