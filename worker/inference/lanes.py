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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

INTERACTIVE = 0  # someone is waiting for this job: always served first
BULK = 1  # a backfill: served when no interactive work waits, never in the reserved capacity
LANES = (INTERACTIVE, BULK)
NAMES = {INTERACTIVE: "interactive", BULK: "bulk"}

_current: ContextVar[int] = ContextVar("dfscan_lane", default=INTERACTIVE)


def current() -> int:
    """The lane of the job this thread is working for (interactive outside any job)."""
    return _current.get()


@contextmanager
def running_in(lane: int) -> Iterator[None]:
    """Work done inside this block (on this thread) is ``lane``'s."""
    if lane not in LANES:
        raise ValueError(f"lane must be one of {LANES}, got {lane}")
    token = _current.set(lane)
    try:
        yield
    finally:
        _current.reset(token)
