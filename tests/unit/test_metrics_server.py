"""The worker's /metrics server: idle connections hold no thread, are closed after the idle timeout,
and a flood of them neither grows the thread count nor locks a scraper out."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable

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
