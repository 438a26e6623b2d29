"""The dynamic batcher: batches across threads, fails a faulty batch per item, drains on close, and
serves foreground items (images) before background ones (a video's frames) without starving either."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import torch

from dfscan.exceptions import InferenceError
from worker.inference import lanes
from worker.inference.model.batcher import BACKGROUND, DynamicBatcher, MicroBatcher

# A ceiling for conditions, never a time window: a busy machine makes a wait longer, not a failure.
CEILING = 60.0


def _mean_model(calls: list[int]):
    def predict(pixels: torch.Tensor) -> list[float]:
        calls.append(pixels.shape[0])
        return pixels.flatten(1).mean(1).tolist()

    return predict


def test_each_caller_gets_its_own_score_and_batches_form() -> None:
    calls: list[int] = []
    batcher = DynamicBatcher(_mean_model(calls), max_batch=8, max_wait=0.2)
    start = threading.Barrier(16)

    def one(i: int) -> float:
        start.wait()
        return batcher.submit(torch.full((3, 4, 4), i / 100)).result(timeout=CEILING)

    with ThreadPoolExecutor(16) as pool:
        scores = list(pool.map(one, range(16)))
    batcher.close(timeout=5)
    assert scores == pytest.approx([i / 100 for i in range(16)])
    assert sum(calls) == 16
    assert max(calls) > 1, f"no batching happened: {calls}"
    assert max(calls) <= 8
    assert batcher.stats.items == 16


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("mat1 and mat2 shapes cannot be multiplied (3x4 and 5x6)", "INFERENCE_FAILED"),
        # torch's words for a CUDA context broken for good: the process must go (DEVICE_FAULT)
        ("CUDA error: device-side assert triggered", "DEVICE_FAULT"),
        ("CUDA error: an illegal memory access was encountered", "DEVICE_FAULT"),
    ],
)
def test_model_fault_fails_every_item_of_the_batch_with_inference_error(error: str, code: str) -> None:
    def broken(pixels: torch.Tensor) -> list[float]:
        raise RuntimeError(error)

    batcher = DynamicBatcher(broken, max_batch=4, max_wait=0.05)
    futures = [batcher.submit(torch.zeros(3, 2, 2)) for _ in range(3)]
    for future in futures:
        with pytest.raises(InferenceError, match=error.split(" (")[0]) as info:
            future.result(timeout=CEILING)
        assert info.value.code == code and not info.value.permanent
    batcher.close(timeout=5)
    assert batcher.stats.failed_batches >= 1


def test_wrong_number_of_scores_is_caught() -> None:
    batcher = DynamicBatcher(lambda pixels: [0.5], max_batch=4, max_wait=0.2)
    futures = [batcher.submit(torch.zeros(3, 2, 2)) for _ in range(2)]
    with pytest.raises(InferenceError, match="returned 1 results for a batch of 2"):
        futures[1].result(timeout=CEILING)
    batcher.close(timeout=5)


def test_close_drains_submitted_items_and_refuses_new_ones() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def slow(pixels: torch.Tensor) -> list[float]:
        gate.wait(5)
        calls.append(pixels.shape[0])
        return [0.25] * pixels.shape[0]

    batcher = DynamicBatcher(slow, max_batch=2, max_wait=0.0)
    futures = [batcher.submit(torch.zeros(3, 2, 2)) for _ in range(5)]
    closer = threading.Thread(target=batcher.close, kwargs={"timeout": 10})
    closer.start()
    gate.set()
    closer.join(10)
    assert [f.result(timeout=CEILING) for f in futures] == [0.25] * 5
    with pytest.raises(InferenceError, match="shut down"):
        batcher.submit(torch.zeros(3, 2, 2))


def test_micro_batcher_coalesces_any_batch_function_and_keeps_its_errors() -> None:
    from worker.inference.model.batcher import MicroBatcher

    seen: list[list[int]] = []
    gate = threading.Event()

    def double(items: list[int]) -> list[int]:
        gate.wait(5)
        seen.append(items)
        return [2 * i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(double, max_batch=64, max_wait=0.0, name="db")
    first = batcher.submit(0)  # the thread takes this one alone and blocks on the gate
    time.sleep(0.1)
    rest = [batcher.submit(i) for i in range(1, 6)]  # these queue up while the first batch runs
    gate.set()
    assert [f.result(timeout=CEILING) for f in [first, *rest]] == [0, 2, 4, 6, 8, 10]
    assert seen == [[0], [1, 2, 3, 4, 5]]

    def broken(items: list[int]) -> list[int]:
        raise ConnectionError("database is down")

    batcher.close(timeout=5)
    failing: MicroBatcher[int, int] = MicroBatcher(broken, max_batch=64, max_wait=0.0, name="db")
    with pytest.raises(ConnectionError, match="database is down"):
        failing.submit(7).result(timeout=CEILING)
    failing.close(timeout=5)


# --- priorities: images before a video's frames ---------------------------------------------------


def _gated(seen: list[list[int]], gate: threading.Event) -> Callable[[list[int]], list[int]]:
    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        seen.append(list(items))
        return items

    return run


def _held_batcher(**kwargs: Any) -> tuple[MicroBatcher[int, int], list[list[int]], threading.Event]:
    """A batcher whose first batch (item -1, background) blocks until the gate opens, so what is
    submitted meanwhile queues up and the next batches show the order the batcher chose."""
    seen: list[list[int]] = []
    gate = threading.Event()
    batcher: MicroBatcher[int, int] = MicroBatcher(_gated(seen, gate), name="model", **kwargs)
    batcher.submit(-1, priority=BACKGROUND)
    deadline = time.monotonic() + 5
    while batcher.waiting(BACKGROUND) and time.monotonic() < deadline:
        time.sleep(0.005)
    return batcher, seen, gate


def test_foreground_items_run_before_background_ones_queued_earlier_and_never_share_their_batch() -> None:
    batcher, seen, gate = _held_batcher(max_batch=8, max_wait=0.0, mix=False, background_batch=1)
    frames = [batcher.submit(i, priority=BACKGROUND) for i in (10, 11, 12)]
    images = [batcher.submit(i) for i in (1, 2)]
    gate.set()
    for future in [*frames, *images]:
        future.result(timeout=CEILING)
    batcher.close(timeout=5)
    # The images waited for the batch already running only; each frame then ran alone (batch 1).
    assert seen == [[-1], [1, 2], [10], [11], [12]]
    assert batcher.stats.mixed_batches == 0


def test_with_mixing_background_items_fill_the_rest_of_a_foreground_batch() -> None:
    batcher, seen, gate = _held_batcher(max_batch=4, max_wait=0.0, mix=True)
    frames = [batcher.submit(i, priority=BACKGROUND) for i in (10, 11, 12)]
    images = [batcher.submit(i) for i in (1, 2)]
    gate.set()
    for future in [*frames, *images]:
        future.result(timeout=CEILING)
    batcher.close(timeout=5)
    assert seen == [[-1], [1, 2, 10, 11], [12]]
    assert batcher.stats.mixed_batches == 1


def test_a_background_item_that_waited_too_long_runs_before_newer_foreground_items() -> None:
    """A steady stream of images slows a video down but never starves it."""
    seen: list[list[int]] = []
    order_lock = threading.Lock()

    def slow(items: list[int]) -> list[int]:
        time.sleep(0.02)
        with order_lock:
            seen.append(list(items))
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(
        slow, max_batch=1, max_wait=0.0, name="model", mix=False, starve_after=0.2
    )
    stop = threading.Event()

    def images() -> None:  # always at least one image waiting
        i = 0
        while not stop.is_set():
            batcher.submit(i).result(timeout=CEILING)
            i += 1

    feeders = [threading.Thread(target=images) for _ in range(3)]
    for feeder in feeders:
        feeder.start()
    time.sleep(0.1)
    frame = batcher.submit(-5, priority=BACKGROUND)
    # The images never stop until the frame is done: a starved frame would never be. (How long it
    # waits, about starve_after, is a timing claim, not asserted here on a shared machine.)
    assert frame.result(timeout=CEILING) == -5
    assert not stop.is_set() and all(feeder.is_alive() for feeder in feeders)
    stop.set()
    for feeder in feeders:
        feeder.join(CEILING)
    batcher.close(timeout=CEILING)
    assert [-5] in seen


def test_close_drains_both_classes_without_waiting_out_max_wait_and_refuses_an_unknown_priority() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()
    gate.set()
    batcher: MicroBatcher[int, int] = MicroBatcher(
        _gated(seen, gate), max_batch=8, max_wait=3600.0, name="model", mix=False, background_batch=2
    )
    # The image waits for a batch of 8 to fill (an hour); the frames wait behind it.
    futures = [batcher.submit(1)] + [batcher.submit(i, priority=BACKGROUND) for i in (10, 11, 12)]
    with pytest.raises(ValueError, match="priority"):
        batcher.submit(3, priority=7)
    batcher.close(timeout=CEILING)
    assert all(f.done() for f in futures)  # close ran them: it did not wait out the hour
    assert [f.result(timeout=0) for f in futures] == [1, 10, 11, 12]
    assert seen == [[1], [10, 11], [12]]


# --- lanes: interactive work before any bulk work --------------------------------------------------


def test_interactive_items_run_before_a_bulk_backlog_and_a_bulk_step_on_a_cpu_is_one_item() -> None:
    """Behind 6 bulk crowd crops and 2 bulk frames queued earlier, interactive images wait only for the
    batch already running; bulk then runs one input at a time (mix=False: a CPU)."""
    batcher, seen, gate = _held_batcher(max_batch=8, max_wait=0.0, mix=False)
    bulk = [batcher.submit(i, lane=lanes.BULK) for i in (20, 21, 22, 23, 24, 25)]
    frames = [batcher.submit(i, priority=BACKGROUND, lane=lanes.BULK) for i in (30, 31)]
    urgent = [batcher.submit(i, lane=lanes.INTERACTIVE) for i in (1, 2)]
    gate.set()
    for future in [*bulk, *frames, *urgent]:
        future.result(timeout=5)
    batcher.close(timeout=5)
    assert seen == [[-1], [1, 2], [20], [21], [22], [23], [24], [25], [30], [31]]
    assert batcher.stats.mixed_batches == 0
    assert batcher.background_batch == 1


def test_with_mixing_an_interactive_batch_is_filled_with_bulk_items_after_its_own() -> None:
    batcher, seen, gate = _held_batcher(max_batch=4, max_wait=0.0, mix=True)
    bulk = [batcher.submit(i, lane=lanes.BULK) for i in (20, 21, 22)]
    frame = batcher.submit(10, priority=BACKGROUND)  # an interactive video's frame
    urgent = batcher.submit(1)
    gate.set()
    for future in [*bulk, frame, urgent]:
        future.result(timeout=5)
    batcher.close(timeout=5)
    assert seen == [[-1], [1, 10, 20, 21], [22]]


def test_a_starving_bulk_item_never_overtakes_interactive_work_but_does_overtake_inside_its_lane() -> None:
    # starve_after=0: every background item counts as starving at once.
    batcher, seen, gate = _held_batcher(max_batch=8, max_wait=0.0, mix=False, starve_after=0.0)
    bulk_frame = batcher.submit(30, priority=BACKGROUND, lane=lanes.BULK)
    bulk_image = batcher.submit(20, lane=lanes.BULK)
    urgent = batcher.submit(1)
    gate.set()
    for future in (bulk_frame, bulk_image, urgent):
        future.result(timeout=5)
    batcher.close(timeout=5)
    assert seen == [[-1], [1], [30], [20]]


def test_the_lane_defaults_to_the_submitting_threads_job() -> None:
    batcher, seen, gate = _held_batcher(max_batch=8, max_wait=0.0, mix=False)
    futures: list[Future[int]] = []

    def bulk_job() -> None:
        with lanes.running_in(lanes.BULK):
            futures.extend(batcher.submit(i) for i in (20, 21))

    thread = threading.Thread(target=bulk_job)
    thread.start()
    thread.join(5)
    futures.append(batcher.submit(1))  # this thread is in no job: interactive
    assert batcher.waiting(lane=lanes.BULK) == 2 and batcher.waiting(lane=lanes.INTERACTIVE) == 1
    gate.set()
    for future in futures:
        future.result(timeout=5)
    batcher.close(timeout=5)
    assert seen == [[-1], [1], [20], [21]]
    with pytest.raises(ValueError, match="lane"):
        batcher.submit(1, lane=7)


def test_a_reserved_thread_runs_an_interactive_image_while_a_bulk_batch_holds_the_shared_one() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        if items[0] >= 20:  # bulk items block until the gate opens
            gate.wait(60)
        seen.append(list(items))
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(
        run, max_batch=8, max_wait=0.0, name="model", mix=False, reserved=1
    )
    bulk = batcher.submit(20, lane=lanes.BULK)
    deadline = time.monotonic() + 60
    while batcher.waiting(lane=lanes.BULK) and time.monotonic() < deadline:
        time.sleep(0.005)  # the shared thread took the bulk item and blocks on it
    more_bulk = batcher.submit(21, lane=lanes.BULK)
    frame = batcher.submit(
        10, priority=BACKGROUND
    )  # an interactive video's frame: not for the reserved thread
    assert batcher.submit(1).result(timeout=60) == 1  # no wait for the bulk batch: the gate is still shut
    assert not gate.is_set() and not bulk.done() and not more_bulk.done() and not frame.done()
    gate.set()
    assert [f.result(timeout=60) for f in (bulk, frame, more_bulk)] == [20, 10, 21]
    batcher.close(timeout=10)
    assert seen == [[1], [20], [10], [21]]


def test_a_batch_waits_for_the_callers_on_their_way_and_never_for_a_lone_one() -> None:
    seen: list[list[int]] = []
    expected = [1]
    batcher: MicroBatcher[int, int] = MicroBatcher(
        lambda items: seen.append(list(items)) or list(items),
        max_batch=64,
        max_wait=3 * CEILING,  # longer than the test waits: only `expected` can end the wait
        name="db",
        expected=lambda: expected[0],
    )
    try:
        assert batcher.submit(7).result(timeout=CEILING) == 7  # alone: runs at once
        expected[0] = 3
        futures = [batcher.submit(1), batcher.submit(2)]
        time.sleep(0.2)
        assert not any(f.done() for f in futures)  # a third caller is on its way: the batch waits
        futures.append(batcher.submit(3))
        assert [f.result(timeout=CEILING) for f in futures] == [1, 2, 3]
        assert seen == [[7], [1, 2, 3]]
    finally:
        expected[0] = 0
        batcher.close(timeout=CEILING)
