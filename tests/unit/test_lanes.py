"""Bulk work gives way to interactive jobs in flight: at its budget checks, in the batchers, and (where the
process may renice threads) for the CPU."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from worker.inference import lanes
from worker.inference.budget import Budget, Limits
from worker.inference.model.batcher import MicroBatcher

# A ceiling for conditions, never a time window: a busy machine makes a wait longer, not a failure.
CEILING = 60.0


@contextmanager
def interactive_job() -> Iterator[threading.Event]:
    """An interactive job in flight on another thread until the block ends."""
    entered, release = threading.Event(), threading.Event()

    def job() -> None:
        with lanes.running_in(lanes.INTERACTIVE):
            entered.set()
            release.wait(CEILING)

    thread = threading.Thread(target=job)
    thread.start()
    assert entered.wait(CEILING)
    try:
        yield release
    finally:
        release.set()
        thread.join(CEILING)
    assert lanes.interactive_in_flight() == 0


def _wait_until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + CEILING
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_bulk_thread_waits_for_interactive_jobs_in_flight_and_an_interactive_one_never_does() -> None:
    assert lanes.yield_to_interactive() == 0.0  # none in flight
    with interactive_job() as release:
        assert lanes.interactive_in_flight() == 1
        assert lanes.yield_to_interactive(ceiling=CEILING) == 0.0  # outside any job: interactive
        done = threading.Event()

        def bulk() -> None:
            with lanes.running_in(lanes.BULK):
                lanes.yield_to_interactive(ceiling=CEILING)
            done.set()

        thread = threading.Thread(target=bulk)
        thread.start()
        assert not done.wait(0.3), "the bulk thread went on while an interactive job was in flight"
        release.set()
        assert done.wait(CEILING), "the bulk thread still waits after the interactive job ended"
        thread.join(CEILING)


def test_the_ceiling_lets_bulk_work_go_on_under_a_steady_interactive_stream() -> None:
    with interactive_job(), lanes.running_in(lanes.BULK):
        waited = lanes.yield_to_interactive(ceiling=0.05)
    assert waited >= 0.05


def test_a_bulk_budget_check_gives_way_and_the_wait_is_not_work() -> None:
    budget = Budget(Limits(seconds=1000.0))
    done = threading.Event()

    def bulk() -> None:
        with lanes.running_in(lanes.BULK):
            budget.check("decode")
        done.set()

    with interactive_job() as release:
        thread = threading.Thread(target=bulk)
        thread.start()
        _wait_until(lambda: budget.is_waiting, "the bulk budget check did not wait")
        release.set()
        assert done.wait(CEILING)
        thread.join(CEILING)
    assert budget._waited > 0


def test_a_bulk_job_holding_pixels_does_not_wait() -> None:
    """Its pixels may be the decode memory an interactive decode waits for: it finishes its stage first."""
    budget = Budget(Limits(seconds=1000.0))
    with interactive_job(), lanes.running_in(lanes.BULK), budget.hold(1024, "faces"):
        budget.check("faces")
        assert budget._waited == 0.0


def test_a_batcher_holds_bulk_batches_back_while_an_interactive_job_is_in_flight() -> None:
    ran: list[str] = []
    batcher: MicroBatcher[str, str] = MicroBatcher(
        lambda items: [ran.append(item) or item for item in items],  # type: ignore[func-returns-value]
        max_batch=4,
        max_wait=0.0,
        name="test",
        mix=False,
        reserved=1,
        yield_bulk=True,
    )
    try:
        with interactive_job():
            bulk = batcher.submit("bulk", lane=lanes.BULK)
            assert batcher.submit("interactive", lane=lanes.INTERACTIVE).result(CEILING) == "interactive"
            assert not bulk.done() and ran == ["interactive"]
        assert bulk.result(CEILING) == "bulk"
    finally:
        batcher.close(CEILING)


@pytest.mark.skipif(not lanes.can_renice(), reason="this process cannot give a thread its priority back")
def test_a_bulk_job_runs_niced_and_gets_its_priority_back() -> None:
    tid = threading.get_native_id()
    base = os.getpriority(os.PRIO_PROCESS, tid)
    with lanes.running_in(lanes.BULK):
        assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, base + lanes.BULK_NICE)
        with lanes.running_in(lanes.INTERACTIVE):
            assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, base + lanes.BULK_NICE)
    assert os.getpriority(os.PRIO_PROCESS, tid) == base
