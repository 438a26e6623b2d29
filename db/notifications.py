"""Wake a waiting loop when a transaction wrote work for it: Postgres ``LISTEN``/``NOTIFY``.

A writer calls :func:`notify` inside its transaction; Postgres sends the notification when (and
only if) the transaction commits, once per channel however many times it was called. A loop waits
with :meth:`Listener.wait`: ``select()`` on a dedicated autocommit connection that ran ``LISTEN``
(psycopg2's documented way: ``select`` the connection, ``poll()``, drain ``notifies``), up to its
poll interval, which stays the fallback: for work that comes due by time (a retry), for SQLite
(no ``NOTIFY``), and while the listening connection is down. A dropped connection is closed and
opened again later (at most every ``retry_every`` seconds) without failing the loop; a notification
sent while nobody listened is not lost work, only a later wake-up (the next poll finds the rows).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# application_name of the listening connections (pg_stat_activity shows who is waiting).
APPLICATION_NAME = "dfscan-listen"
# Longest single select(): how soon a wait notices that its loop was asked to stop.
_STOP_CHECK = 0.5


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def notify(session: Session, channel: str) -> None:
    """``NOTIFY channel`` at the commit of ``session``'s transaction (Postgres; a no-op elsewhere)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {channel}"))


class Listener:
    """``LISTEN channel`` on a connection of its own; :meth:`wait` returns early when notified.

    Not thread-safe: one loop owns it. Without Postgres it only sleeps (``listening`` stays False).
    """

    def __init__(self, engine: Engine, channel: str, *, retry_every: float = 5.0) -> None:
        self.engine = engine
        self.channel = channel
        self.retry_every = retry_every
        self.enabled = engine.dialect.name == "postgresql"
        self._conn: Any = None  # a psycopg2 connection while listening
        self._failed_at = -float("inf")  # monotonic time of the last lost or refused connection
        self.connects = 0  # how many times LISTEN was (re)established
        # A pipe :meth:`wake` writes to, so another thread (a finished POST) ends a wait at once.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)

    def wake(self) -> None:
        """End the current (or next) :meth:`wait` early; safe from any thread."""
        with contextlib.suppress(OSError):  # the pipe is full (a wake is pending anyway) or closed
            os.write(self._wake_w, b"x")

    def _woken(self) -> bool:
        try:
            return bool(os.read(self._wake_r, 4096))
        except (BlockingIOError, OSError):
            return False

    @property
    def listening(self) -> bool:
        return self._conn is not None

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Wait up to ``timeout`` seconds; True when woken early (a notification, :meth:`wake`, or a new
        LISTEN after which the caller should look for work it may have missed), False on timeout or
        stop."""
        due = self._conn is None and self.enabled and time.monotonic() >= self._failed_at + self.retry_every
        if due and self._connect():
            return True
        end = time.monotonic() + timeout
        while not stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            watched: list[Any] = [self._wake_r] if self._conn is None else [self._conn, self._wake_r]
            try:
                ready, _, _ = select.select(watched, [], [], min(left, _STOP_CHECK))
                if self._wake_r in ready and self._woken():
                    return True
                if self._conn is None or self._conn not in ready:
                    continue
                self._conn.poll()  # reads what arrived; raises if the server hung up
            except Exception as exc:  # psycopg2.OperationalError/InterfaceError, or a closed socket
                self._drop(exc)
                continue
            if self._conn.notifies:
                self._conn.notifies.clear()
                return True
        return False

    def _connect(self) -> bool:
        try:
            cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
            cparams = {"connect_timeout": 5, "application_name": APPLICATION_NAME, **cparams}
            conn = self.engine.dialect.loaded_dbapi.connect(*cargs, **cparams)
            conn.autocommit = True  # a LISTEN inside an open transaction hears nothing until it ends
            with conn.cursor() as cursor:
                cursor.execute(f"LISTEN {self.channel}")
        except Exception as exc:
            self._failed_at = time.monotonic()
            log.warning("cannot LISTEN %s, polling meanwhile: %s", self.channel, exc)
            return False
        self._conn = conn
        self.connects += 1
        log.info("listening on %s", self.channel)
        return True

    def _drop(self, exc: BaseException) -> None:
        log.warning("lost the LISTEN %s connection, polling meanwhile: %s", self.channel, exc)
        self.close()
        self._failed_at = time.monotonic()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already gone
                log.debug("closing the LISTEN connection failed", exc_info=True)
            self._conn = None
