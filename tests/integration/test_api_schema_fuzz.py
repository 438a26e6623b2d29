"""Hostile input against the real server: schemathesis generates requests from the served /openapi.json
(valid and invalid bodies, paths, queries, headers, multipart parts) and checks that none answers 500 and
every answer fits the schema; bodies over the cap are refused without being read whole, and a slow
client is cut off at DFSCAN_API_BODY_TIMEOUT."""

# ruff: noqa: F811
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.api import ApiServer, api, start_api  # noqa: F401
from tests.fixtures.service import Service, service  # noqa: F401

pytestmark = pytest.mark.integration
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def _schemathesis(
    server: ApiServer, key: str, max_examples: int, tmp: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            server.base_url + "/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--max-examples",
            str(max_examples),
            "--seed",
            "1",
            "--header",
            f"Authorization: Bearer {key}",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )


def _run_and_check(server: ApiServer, key: str, max_examples: int, tmp: Path) -> None:
    if not SCHEMATHESIS.exists():
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]')")
    run = _schemathesis(server, key, max_examples, tmp)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # Every operation of the served schema was exercised (schemathesis' summary: "Selected: N/N", "Tested: N").
    selected = re.search(r"Selected:\s*(\d+)/(\d+)", run.stdout)
    tested = re.search(r"Tested:\s*(\d+)", run.stdout)
    assert selected and tested, run.stdout[-3000:]
    assert int(tested.group(1)) == int(selected.group(2)) >= 8, run.stdout[-3000:]
    assert "500" not in [
        line.split()[0] for line in server.text().splitlines() if line.split()[:1] == ["500"]
    ]
    assert key not in server.text() and key not in run.stdout


def test_the_openapi_schema_fuzzed_briefly_finds_no_500(api: ApiServer, tmp_path: Path) -> None:
    _run_and_check(api, api.tenant("fuzz", "submit,read,review"), 8, tmp_path)


@pytest.mark.slow
def test_the_openapi_schema_fuzzed_longer_finds_no_500(api: ApiServer, tmp_path: Path) -> None:
    _run_and_check(api, api.tenant("fuzz", "submit,read,review"), 100, tmp_path)


def _raw(server: ApiServer, data: bytes, *, read_timeout: float = 30.0) -> bytes:
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b'"error"' in b"".join(chunks):
                break
        return b"".join(chunks)


def test_bodies_over_the_cap_are_refused_unread_and_slow_clients_cut_off(
    service: Service, tmp_path: Path
) -> None:
    env = {**service.env, "DFSCAN_API_BODY_TIMEOUT": "2", "DFSCAN_UPLOAD_STORE": str(tmp_path / "up")}
    server = start_api(env, service.database_url, tmp_path / "api.log")
    try:
        key = server.tenant("acme", "submit,read")
        auth = f"Authorization: Bearer {key}\r\n".encode()
        # A declared 10 GiB body: answered at once from the header, nothing of it sent.
        head = b"POST /v1/scans HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Type: application/json\r\n"
        answer = _raw(server, head + b"Content-Length: 10737418240\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413") and b"TOO_LARGE" in answer, answer[:300]
        # Chunked, no length: refused once past the 1 MiB JSON cap, long before the 64 MiB it would send.
        host, port = server.base_url.removeprefix("http://").split(":")
        sent = 0
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            block = b"a" * 65536
            answer = b""
            try:
                while sent < 64 * 1024 * 1024:
                    sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
                    sent += len(block)
                    sock.setblocking(False)
                    try:
                        answer = sock.recv(65536)
                    except BlockingIOError:
                        answer = b""
                    finally:
                        sock.setblocking(True)
                    if answer:
                        break
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.settimeout(10)
            while b"TOO_LARGE" not in answer:  # the rest of the answer (headers and body may come apart)
                try:
                    more = sock.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 413") and b"TOO_LARGE" in answer, answer[:300]
        assert sent < 8 * 1024 * 1024, f"the server read {sent} bytes before refusing"
        # A client that sends half its declared body and stalls: 408 after DFSCAN_API_BODY_TIMEOUT.
        started = time.monotonic()
        answer = _raw(server, head + b"Content-Length: 100\r\n\r\n" + b'{"sources": [')
        assert answer.startswith(b"HTTP/1.1 408") and b"REQUEST_TIMEOUT" in answer, answer[:300]
        assert time.monotonic() - started < 60
        with server.client(key) as http:  # the server is still serving others
            assert http.get("/v1/results").status_code == 200
    finally:
        server.stop()
