"""The worker's /metrics server: idle connections hold no thread, are closed after the idle timeout,
and a flood of them neither grows the thread count nor locks a scraper out."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest

from worker.metrics_server import MetricsServer


def _wait_for(condition: Callable[[], bool], ceiling: float = 60.0) -> bool:
    deadline = time.monotonic() + ceiling
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        assert answer.status == 200
        return answer.read()


def test_two_hundred_idle_connections_make_no_threads_and_scrapes_still_answer() -> None:
    server = MetricsServer("127.0.0.1", 0, idle_timeout=30.0, max_connections=64).start()
    try:
        assert b"# HELP" in _scrape(server.port)
        threads_before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
        # The server has seen them all: 64 kept waiting (the cap), the older ones closed to make room.
        assert _wait_for(lambda: server.open_connections == 64)
        assert threading.active_count() <= threads_before + 2  # at most the handler pool's threads
        assert b"# HELP" in _scrape(server.port)  # a scraper is not locked out by the flood
        assert threading.active_count() <= threads_before + 2
        closed = 0
        for conn in idle[:100]:  # the oldest were closed by the server: reading gives EOF
            conn.settimeout(30)
            try:
                closed += conn.recv(1) == b""
            except OSError:
                closed += 1
        assert closed == 100
        for conn in idle:
            conn.close()
    finally:
        server.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    server = MetricsServer("127.0.0.1", 0, idle_timeout=0.5).start()
    try:
        conn = socket.create_connection(("127.0.0.1", server.port))
        conn.settimeout(60)
        assert conn.recv(1) == b""  # the server hung up: nothing was ever sent
        assert _wait_for(lambda: server.open_connections == 0)
        trickle = socket.create_connection(("127.0.0.1", server.port))
        trickle.sendall(b"GET /metr")  # a request that never finishes holds a handler only so long
        trickle.settimeout(60)
        assert trickle.recv(1024) == b""  # closed after the timeout, no answer to half a request
        conn.close()
        trickle.close()
        assert b"HELP" in _scrape(server.port)
    finally:
        server.close()


def test_the_probes_answer_from_the_health_function_and_metrics_stay_at_every_other_path() -> None:
    import urllib.error
    import urllib.request

    answers = {"livez": (200, "ok"), "readyz": (503, "not ready: loading")}
    server = MetricsServer("127.0.0.1", 0, health=lambda probe: answers[probe]).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(f"{base}/livez", timeout=10) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/readyz", timeout=10)
        assert refused.value.code == 503 and refused.value.read() == b"not ready: loading\n"
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
            assert b"# HELP" in answer.read()
    finally:
        server.close()


def test_the_worker_is_not_ready_before_it_consumes_and_neither_ready_nor_live_after_a_device_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import app

    monkeypatch.setattr(app, "fatal", [])
    monkeypatch.setattr(app, "_ready", threading.Event())
    assert app.health("livez") == (200, "ok")
    assert app.health("readyz")[0] == 503
    app._ready.set()
    assert app.health("readyz") == (200, "ok")
    app.fatal.append("error DEVICE_FAULT: the worker cannot serve: CUDA error: an illegal memory access")
    assert app.health("livez") == (503, app.fatal[0])
    assert app.health("readyz")[0] == 503
