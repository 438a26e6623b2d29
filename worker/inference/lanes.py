"""Lanes: whose work a model input, a detector input or a decode is, so shared resources serve it in order.

A job is **interactive** (someone waits for its answer: the worker's ``inference.interactive`` queue, a
``dfscan scan`` on a laptop) or **bulk** (a backfill: the ``inference`` queue). Every resource that jobs
share in one process (the model batcher, the face detector's batcher, the decode children; the task
threads are held back at the broker, see ``dfscan/broker.py``) serves interactive work first and keeps
capacity that bulk work cannot take, as Triton reserves instances per priority level. Inside a lane the
kinds of input keep their own order (an image before a video's frames, see ``batcher.FOREGROUND``).

The lane travels with the thread that judges a job, as a context variable: the worker sets it around
a job (:func:`running_in`) and every stage below reads it where it queues (:func:`current`), so no
stage has to be handed it and none can forget it. Work outside any job (``dfscan scan``, tests) is
interactive. Pure: no Celery, no broker.

Reserved capacity is not enough on a CPU: bulk work already running (16 decodes, a detector or model
step) shares the cores and the interpreter with the interactive image. So while an interactive job is
in flight in the process (:func:`interactive_in_flight`), bulk work gives way twice:

- **at its next stage** (:func:`yield_to_interactive`): a bulk job's budget check, between the stages of
  its road and between a video's packets, waits (not counted as work) until no interactive job is in
  flight, at most ``YIELD_CEILING_S`` at a time, so a steady interactive stream slows bulk work down but
  never stops it; the batchers do not start a bulk batch meanwhile either;
- **for the CPU** (:func:`os_priority`): a thread doing bulk work runs at ``BULK_NICE`` (an OS nice
  value, per thread on Linux), so the stage it is in when the interactive job arrives takes only the
  CPU the interactive job leaves. A thread that can be given back its priority afterwards is niced (a
  thread of the task pool works for either lane): root, ``CAP_SYS_NICE`` or ``RLIMIT_NICE`` (Docker's
  ``--ulimit nice=...``) allows it; otherwise no thread is niced and only the yielding above applies
  (:func:`can_renice`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger(__name__)

INTERACTIVE = 0  # someone is waiting for this job: always served first
BULK = 1  # a backfill: served when no interactive work waits, never in the reserved capacity
LANES = (INTERACTIVE, BULK)
NAMES = {INTERACTIVE: "interactive", BULK: "bulk"}

# Nice value a thread doing bulk work runs at (0 is normal, 19 the lowest priority): under the Linux
# scheduler a nice-10 thread gets about a tenth of the CPU a nice-0 thread beside it gets.
BULK_NICE = 10
# Longest one bulk stage waits for interactive work in flight before it goes on anyway.
YIELD_CEILING_S = 2.0

_current: ContextVar[int] = ContextVar("dfscan_lane", default=INTERACTIVE)
_in_flight = 0  # interactive jobs being judged in this process (inside running_in(INTERACTIVE))
_in_flight_changed = threading.Condition()
_renice: bool | None = None  # can_renice(), once per process


def current() -> int:
    """The lane of the job this thread is working for (interactive outside any job)."""
    return _current.get()


@contextmanager
def running_in(lane: int) -> Iterator[None]:
    """Work done inside this block (on this thread) is ``lane``'s: a job. An interactive job counts as in
    flight (bulk work gives way to it); a bulk job's thread runs at the bulk OS priority."""
    global _in_flight
    if lane not in LANES:
        raise ValueError(f"lane must be one of {LANES}, got {lane}")
    token = _current.set(lane)
    if lane == INTERACTIVE:
        with _in_flight_changed:
            _in_flight += 1
    try:
        with os_priority(lane):
            yield
    finally:
        _current.reset(token)
        if lane == INTERACTIVE:
            with _in_flight_changed:
                _in_flight -= 1
                _in_flight_changed.notify_all()


def interactive_in_flight() -> int:
    """How many interactive jobs this process is judging now."""
    return _in_flight


def yield_to_interactive(ceiling: float = YIELD_CEILING_S) -> float:
    """On a bulk thread, wait while interactive jobs are in flight (at most ``ceiling`` seconds); the
    seconds waited. Interactive threads (and work outside any job) never wait."""
    if current() == INTERACTIVE or not _in_flight:
        return 0.0
    started = time.monotonic()
    with _in_flight_changed:
        _in_flight_changed.wait_for(lambda: not _in_flight, timeout=ceiling)
    return time.monotonic() - started


def can_renice() -> bool:
    """Whether a thread of this process can be niced to ``BULK_NICE`` and given its priority back
    (checked once, on a throwaway thread)."""
    global _renice
    if _renice is None:
        result: list[bool] = []

        def probe() -> None:
            tid = threading.get_native_id()
            try:
                base = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, base + BULK_NICE))
                os.setpriority(os.PRIO_PROCESS, tid, base)
                result.append(True)
            except (OSError, AttributeError):
                result.append(False)

        thread = threading.Thread(target=probe, name="dfscan-renice-probe")
        thread.start()
        thread.join()
        _renice = bool(result and result[0])
        if not _renice:
            log.info("bulk threads keep their OS priority: this process cannot raise a thread's back")
    return _renice


@contextmanager
def os_priority(lane: int) -> Iterator[None]:
    """Run the block on this thread at ``lane``'s OS priority (bulk: ``BULK_NICE`` above the thread's
    own), the thread's own priority restored after; nothing where :func:`can_renice` is False."""
    if lane == INTERACTIVE or not can_renice():
        yield
        return
    tid = threading.get_native_id()
    base = os.getpriority(os.PRIO_PROCESS, tid)
    os.setpriority(os.PRIO_PROCESS, tid, min(19, base + BULK_NICE))
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, tid, base)
