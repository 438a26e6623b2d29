"""The backstop: decode in child processes with an address-space limit and a wall deadline.

The checks in :mod:`worker.inference.images.headers` and :mod:`worker.inference.images.decode` bound what a header can
declare; a parser bug or a hostile stream inside a valid structure can still spin or balloon in C code that
no thread can interrupt. A child process can be stopped: each decode runs in one of
``ImagePolicy.decode_processes`` children, each with ``RLIMIT_AS`` set to its start-up size plus
``ImagePolicy.decode_memory`` (an allocation beyond it fails as ``MemoryError`` -> ``TOO_LARGE``),
and a decode that has used ``ImagePolicy.decode_timeout`` seconds of CPU (or three times that in wall
time, for a parser that blocks) has its child killed and replaced (``IMAGE_TOO_COMPLEX``). CPU time is the
measure because on a loaded machine a legitimate 40 Mpx image decoding beside 15 others took over 4 s of
wall time for 0.6 s of CPU (bench/hostile.py). A child that dies on its own (a crash in a decoder) gives ``CORRUPT_IMAGE``.
The calling process never holds the decoded image, only the (small) result.

Lanes (:mod:`worker.inference.lanes`): bulk decodes hold at most ``processes`` children; one more child
is reserved for interactive decodes, and a child that comes free goes to a waiting interactive decode
first. So a bulk backlog of hostile images costs an interactive image no wait for a child at all, and
the reserved child costs nothing until interactive work needs it (children start on demand).

Each child is a fresh interpreter (``python -m worker.inference.images.decode_pool FD``, never a fork), talking
over a socket pair with ``multiprocessing.connection``: it imports Pillow and numpy only (no torch, no CUDA
state, and not the parent's ``__main__``, which multiprocessing's spawn and forkserver would re-import:
for the ``dfscan`` script that means torch), so it is safe to start after the model is loaded. A child
starts in about half a second, on the first isolated decode and after a kill; the pool is built lazily,
once per process and settings, and children exit when the parent's end of their socket closes.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from dfscan.exceptions import CorruptImageError, DfscanError, ImageTooLargeError
from worker.inference import lanes

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Imported by each child at start, so that its first decode does not pay for them.
_PRELOAD = ("worker.inference.images.decode", "worker.inference.images.resizing")


def _address_space() -> int:
    """This process's current virtual memory size in bytes (from /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


# The deadline: DFSCAN_DECODE_TIMEOUT seconds of the child's CPU, or this many times it in wall time;
# checked every _POLL seconds (a reply wakes the caller at once).
_WALL_FACTOR = 3.0
_POLL = 0.2
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


# Seconds a new child may take to start (the first one also starts the fork server).
_STARTUP_TIMEOUT = 120.0

# Address space a child may take beyond the decode budget: thread stacks and malloc arenas of decoder
# threads (libavif, libheif) reserve virtual memory they mostly never touch.
_SLACK = 256 * 1024 * 1024


def _serve(conn: Connection, allowance: int) -> None:
    """A child's loop: limit the address space, then run (function, args) requests until the pipe closes."""
    for name in _PRELOAD:
        __import__(name)
    limit = _address_space() + allowance + _SLACK
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    conn.send("ready")
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", fn(*args))
        except MemoryError:
            reply = ("error", ImageTooLargeError("over the decode memory limit", limit="decode_memory"))
        except DfscanError as exc:
            reply = ("error", exc)
        except Exception as exc:  # a bug in a decoder: reported, the child lives on
            reply = ("error", CorruptImageError(f"decoder failed: {type(exc).__name__}: {exc}"))
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("error", ImageTooLargeError("over the decode memory limit", limit="decode_memory")))


class _Child:
    def __init__(self, allowance: int) -> None:
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(fd), str(allowance)], pass_fds=(fd,), close_fds=True
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        # Start-up (the fork server's first start imports Pillow and numpy) is not part of any deadline.
        if not self.conn.poll(_STARTUP_TIMEOUT) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError(f"decode child did not start within {_STARTUP_TIMEOUT:g} s")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)
        self.conn.close()


# Children kept for interactive decodes beyond DFSCAN_DECODE_PROCESSES (which bulk decodes may all hold).
RESERVED_INTERACTIVE = 1


class _Slots:
    """The pool's children (None: not started yet), handed out interactive first. Bulk callers hold at
    most ``bulk_limit`` of them and never take one while an interactive caller waits."""

    def __init__(self, total: int, bulk_limit: int) -> None:
        self._free: list[_Child | None] = [None] * total
        self.bulk_limit = bulk_limit
        self.bulk_held = 0
        self._interactive_waiting = 0
        self._cond = threading.Condition()

    def get(self) -> _Child | None:
        """A child for this thread's lane (:func:`lanes.current`), waiting for one."""
        bulk = lanes.current() != lanes.INTERACTIVE
        with self._cond:
            if not bulk:
                self._interactive_waiting += 1
            try:
                while not self._free or (
                    bulk and (self.bulk_held >= self.bulk_limit or self._interactive_waiting)
                ):
                    self._cond.wait()
            finally:
                if not bulk:
                    self._interactive_waiting -= 1
            if bulk:
                self.bulk_held += 1
            return self._free.pop()

    def put(self, child: _Child | None) -> None:
        """Give back the child this thread took (same lane as when it was taken)."""
        with self._cond:
            self._free.append(child)
            if lanes.current() != lanes.INTERACTIVE:
                self.bulk_held -= 1
            self._cond.notify_all()

    def drain(self) -> list[_Child | None]:
        with self._cond:
            free, self._free = self._free, []
            return free


class DecodePool:
    """``processes`` decode children for bulk decodes plus ``reserved`` for interactive ones, started on
    demand; :meth:`run` blocks until one is free for the caller's lane."""

    def __init__(
        self, processes: int, memory: int, timeout: float, reserved: int = RESERVED_INTERACTIVE
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.timeout = timeout
        self.memory = memory
        self._idle = _Slots(processes + max(0, reserved), bulk_limit=processes)
        self._closed = False

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a child: its result, or the DfscanError it raised, or TOO_LARGE past the deadline
        (limit decode_time) or the memory limit (decode_memory), CORRUPT_IMAGE if the child died."""
        if self._closed:
            raise RuntimeError("decode pool is closed")
        child = self._idle.get()
        try:
            if child is None or child.process.poll() is not None:
                child = _Child(self.memory)
            child.conn.send((fn, args))
            if not self._wait(child):
                pid = child.process.pid
                child.kill()
                child = None
                logger.warning("decode child %s killed past the %.1f s deadline", pid, self.timeout)
                raise ImageTooLargeError(
                    f"decoding took more than {self.timeout:g} s of CPU (or {_WALL_FACTOR * self.timeout:g} s "
                    "of wall time)",
                    limit="decode_time",
                )
            try:
                status, value = child.conn.recv()
            except (EOFError, OSError):
                code = child.process.wait(5)
                child.kill()
                child = None
                raise CorruptImageError(
                    f"the decoder process died on this image (exit code {code})"
                ) from None
        finally:
            self._idle.put(child)
        if status == "error":
            raise value
        return value  # type: ignore[no-any-return]

    def _wait(self, child: _Child) -> bool:
        """Wait for the child's reply: False once it has used ``timeout`` CPU seconds, or ``_WALL_FACTOR``
        times that in wall time (a parser that blocks). CPU time, because on a loaded machine wall time
        says more about the neighbours than about the image."""
        start_cpu = _cpu_seconds(child.process.pid)
        wall_deadline = time.monotonic() + _WALL_FACTOR * self.timeout
        while True:
            remaining = wall_deadline - time.monotonic()
            if remaining <= 0:
                return False
            if child.conn.poll(min(_POLL, remaining)):
                return True
            if _cpu_seconds(child.process.pid) - start_cpu > self.timeout:
                return False

    def close(self) -> None:
        """Stop every child (tests; the worker's children die with it, they are daemons)."""
        self._closed = True
        for child in self._idle.drain():
            if child is not None:
                child.kill()


_pools: dict[tuple[int, int, float], DecodePool] = {}
_pools_lock = threading.Lock()


def pool_for(processes: int, memory: int, timeout: float) -> DecodePool:
    """The process's pool for these settings, built on first use."""
    key = (processes, memory, timeout)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = DecodePool(processes, memory, timeout)
        return pool


def run_isolated(policy: Any, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the decode pool that ``policy`` (an ImagePolicy) asks for."""
    pool = pool_for(policy.decode_processes, policy.decode_memory, policy.decode_timeout)
    return pool.run(fn, *args)


if __name__ == "__main__":  # a decode child: python -m worker.inference.images.decode_pool FD ALLOWANCE
    _serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
