"""The worker's ``/metrics`` HTTP server: idle connections cost a file descriptor, never a thread.

prometheus-client's ``start_http_server`` starts one thread per connection and keeps it while the
client stays connected: 200 idle connections made 212 threads in a worker (issue 17). This server
waits for connections with one selector thread; only a connection that has sent bytes is handed to a
small pool of handler threads (``HANDLER_THREADS``), which answers one request and closes it. So:

- an idle connection is closed after ``IDLE_TIMEOUT`` seconds without a request;
- a request must arrive in full within ``IDLE_TIMEOUT`` seconds too (the socket timeout of the
  handler), so a trickling client holds one handler thread for at most that long;
- at most ``MAX_CONNECTIONS`` connections are open; past that the oldest waiting one is closed to
  make room, so a flood of idle connections cannot lock a scraper out.

Threads: 1 + HANDLER_THREADS, whatever the clients do.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.exposition import MetricsHandler

log = logging.getLogger(__name__)

# A Prometheus scrape sends its request at once and finishes in milliseconds; 10 s is Prometheus's
# default scrape_timeout, so a slow but honest scraper is never cut off.
IDLE_TIMEOUT = 10.0
# Prometheus, an agent and a person with curl: far fewer than this are open at once.
MAX_CONNECTIONS = 64
# Scrapes are answered one at a time in practice; two let a second scraper not wait for the first.
HANDLER_THREADS = 2


# A probe's answer: (HTTP status, one line of text). ``/livez`` and ``/readyz`` ask it; every other path
# is the metrics.
Health = Callable[[str], tuple[int, str]]


class _Handler(MetricsHandler):
    timeout = IDLE_TIMEOUT  # socket timeout while reading the request and writing the answer
    registry = REGISTRY
    health: Health | None = None

    def do_GET(self) -> None:
        probe = self.path.split("?", 1)[0].strip("/")
        if probe in ("livez", "readyz") and self.health is not None:
            status, text = type(self).health(probe)  # type: ignore[misc]
            body = (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


class MetricsServer:
    """Serve ``registry`` at ``http://addr:port/metrics`` from :meth:`start` until :meth:`close`, and
    ``health`` (when given) at ``/livez`` and ``/readyz`` for probes."""

    def __init__(
        self,
        addr: str,
        port: int,
        *,
        registry: Any = REGISTRY,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        handler_threads: int = HANDLER_THREADS,
        health: Health | None = None,
    ) -> None:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(sockaddr)
            self._listener.listen(128)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._handler = type(
            "Handler", (_Handler,), {"registry": registry, "timeout": idle_timeout, "health": health}
        )
        self._idle_timeout = idle_timeout
        self._max = max_connections
        self._waiting: OrderedDict[socket.socket, float] = OrderedDict()  # connection -> deadline
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._pool = ThreadPoolExecutor(handler_threads, thread_name_prefix="metrics-http")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-accept", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    @property
    def open_connections(self) -> int:
        """Connections accepted and waiting for their request (for tests)."""
        return len(self._waiting)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=min(1.0, self._idle_timeout)):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    self._forget(conn)
                    self._pool.submit(self._serve, conn)
            now = time.monotonic()
            while self._waiting:
                conn, deadline = next(iter(self._waiting.items()))
                if deadline > now:
                    break
                self._drop(conn)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the waiting ones are closed by their deadline
                log.warning("metrics server cannot accept: %s", exc)
                return
            if len(self._waiting) >= self._max:  # make room: the connection that waited longest goes
                self._drop(next(iter(self._waiting)))
            conn.setblocking(False)
            self._waiting[conn] = time.monotonic() + self._idle_timeout
            self._selector.register(conn, selectors.EVENT_READ)

    def _forget(self, conn: socket.socket) -> None:
        self._waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._forget(conn)
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            self._handler(conn, conn.getpeername(), self)
        except Exception as exc:  # a client that hung up or timed out mid-request
            log.debug("metrics request ended early: %r", exc)
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in list(self._waiting):
            self._drop(conn)
        self._selector.close()
        self._listener.close()
        self._pool.shutdown(wait=False)
