"""The backstop: a decode child that hangs, balloons or crashes ends with a stable code, and the pool and
the calling process carry on."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from dfscan.exceptions import CorruptImageError, DfscanError, ImageTooLargeError
from tests.fixtures import parsers
from tests.fixtures.corpus import EXPECTED_SIZES, make_corpus
from tests.fixtures.hostile import hostile_cases
from worker.inference import lanes
from worker.inference.images.decode import ImagePolicy, decode_with_size
from worker.inference.images.decode_pool import DecodePool, _Slots
from worker.inference.model.preprocess import PreprocessConfig, load_pixels

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    pool = DecodePool(1, 256 * MiB, timeout=0.5)
    yield pool
    pool.close()


def test_a_hanging_decoder_is_killed_at_the_deadline_and_replaced(pool: DecodePool) -> None:
    first = pool.run(parsers.pid)
    with pytest.raises(ImageTooLargeError, match=r"or 1.5 s of wall time") as caught:
        pool.run(parsers.hang, 60.0)  # sleeps: no CPU, so the wall limit (3 x the deadline) stops it
    assert (caught.value.code, caught.value.limit) == ("TOO_LARGE", "decode_time")
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    second = pool.run(parsers.pid)
    assert second != first
    assert pool.run(parsers.hang, 0.0) == "woke up"


def test_a_spinning_decoder_is_stopped_by_its_cpu_time(pool: DecodePool) -> None:
    with pytest.raises(ImageTooLargeError, match="more than 0.5 s of CPU") as caught:
        pool.run(parsers.spin, 60.0)
    assert caught.value.message.endswith("(limit: decode_time)")
    assert pool.run(parsers.spin, 0.0) == "done"


def test_a_ballooning_decoder_hits_the_memory_limit_not_the_caller(pool: DecodePool) -> None:
    caller = psutil.Process(os.getpid()).memory_info().rss
    child = pool.run(parsers.pid)
    with pytest.raises(ImageTooLargeError, match="decode memory limit") as caught:
        pool.run(parsers.balloon, 4)
    assert caught.value.limit == "decode_memory"  # kept across the pipe from the child
    assert pool.run(parsers.pid) == child  # a MemoryError is reported; the child lives on
    assert psutil.Process(os.getpid()).memory_info().rss < caller + 64 * MiB


def test_a_crashing_decoder_is_a_corrupt_image_and_the_pool_recovers(pool: DecodePool) -> None:
    with pytest.raises(CorruptImageError, match="decoder process died"):
        pool.run(parsers.crash)
    assert pool.run(parsers.hang, 0.0) == "woke up"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_isolated_decoding_gives_the_same_images_and_codes(tmp_path: Path) -> None:
    isolated = ImagePolicy(decode_processes=1)
    corpus = make_corpus(tmp_path)
    for name, (path, code) in corpus.items():
        data = path.read_bytes()
        outcomes: list[object] = []
        for policy in (ImagePolicy(), isolated):
            try:
                img, size = decode_with_size(data, policy)
            except DfscanError as exc:
                outcomes.append(exc.code)
            else:
                outcomes.append((img.tobytes(), size))
        assert outcomes[0] == outcomes[1], name
        assert outcomes[0] == (code or outcomes[0]), name
        if code is None:
            assert isinstance(outcomes[0], tuple) and outcomes[0][1] == EXPECTED_SIZES[name], name
    for name, case in hostile_cases(full=False).items():
        if case.code is not None:
            with pytest.raises(DfscanError) as caught:
                decode_with_size(case.data, isolated)
            assert caught.value.code == case.code, name


def test_isolated_load_pixels_equals_in_process(tmp_path: Path) -> None:
    cfg = PreprocessConfig.from_dict(
        {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}}
    )
    data = make_corpus(tmp_path)["jpeg_exif_rotated"][0].read_bytes()
    here, size_here = load_pixels(data, cfg, ImagePolicy())
    there, size_there = load_pixels(data, cfg, ImagePolicy(decode_processes=1))
    assert size_here == size_there == (48, 64)
    assert bool((here == there).all())


# --- lanes: a child is kept for interactive decodes, and a freed child goes to them first ------------


def _in_lane(lane: int, call: Callable[[], object]) -> object:
    with lanes.running_in(lane):
        return call()


def _take_in_thread(slots: _Slots, lane: int, got: list[int]) -> threading.Thread:
    def take() -> None:
        _in_lane(lane, slots.get)
        got.append(lane)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


def _settle(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_bulk_decodes_never_take_the_reserved_child_and_interactive_ones_go_first() -> None:
    pool = DecodePool(1, 256 * MiB, timeout=0.5)  # 1 child for bulk + 1 reserved
    slots = pool._idle
    got: list[int] = []
    assert _in_lane(lanes.BULK, slots.get) is None  # bulk holds its one child
    waiting_bulk = _take_in_thread(slots, lanes.BULK, got)
    _settle(lambda: waiting_bulk.is_alive())
    assert slots.get() is None  # interactive: the reserved child, no wait behind the bulk decode
    assert got == []  # the second bulk decode still waits
    # Both children busy; an interactive decode queues behind the bulk one, and is served first.
    waiting_interactive = _take_in_thread(slots, lanes.INTERACTIVE, got)
    _settle(lambda: slots._interactive_waiting == 1)
    _in_lane(lanes.BULK, lambda: slots.put(None))
    waiting_interactive.join(60)
    assert got == [lanes.INTERACTIVE]
    slots.put(None)  # the interactive decodes give their children back: bulk is at its limit until
    slots.put(None)  # then, and takes the freed bulk place
    waiting_bulk.join(60)
    assert got == [lanes.INTERACTIVE, lanes.BULK]
    assert slots.bulk_held == 1
    pool.close()


def test_an_interactive_decode_runs_in_the_reserved_child_while_bulk_holds_the_pool(tmp_path: Path) -> None:
    pool = DecodePool(1, 256 * MiB, timeout=30.0)
    flag = tmp_path / "go"
    bulk_result: list[object] = []

    def bulk() -> None:
        bulk_result.append(_in_lane(lanes.BULK, lambda: pool.run(parsers.wait_for_file, str(flag), 60.0)))

    thread = threading.Thread(target=bulk, daemon=True)
    thread.start()
    _settle(lambda: pool._idle.bulk_held == 1)
    assert pool.run(parsers.hang, 0.0) == "woke up"
    assert thread.is_alive(), "the interactive decode waited for the bulk one"
    flag.touch()
    thread.join(60)
    assert bulk_result == ["signalled"]
    pool.close()
