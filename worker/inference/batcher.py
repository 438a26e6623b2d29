"""Micro-batching across threads: many threads submit one item each, one thread runs them in batches.

:class:`MicroBatcher` is the generic mechanism; :class:`DynamicBatcher` feeds a model with it.

This is how the worker keeps Celery's per-task meaning (acks, retries, time limits, task events)
while still running the model on micro-batches: each Celery task, on a thread of the ``threads``
pool, fetches and preprocesses its own image, then hands the tensor to :class:`DynamicBatcher`
and waits for its score. The model thread takes whatever is waiting, up to ``max_batch`` items,
waiting at most ``max_wait`` seconds for a batch to fill (Triton's dynamic batcher, Ray Serve's
``@serve.batch`` and LitServe work the same way).

A fault of the batch function fails every item of that batch with the same exception, so each task
can put its own job back on the queue; one bad *image* never reaches this point (decode errors
happen in the task thread). ``close()`` drains: items already submitted are still run.

The worker uses the same mechanism for its database round trips (claims, cache look-ups and verdict
writes of concurrent tasks share one statement each), with ``max_wait=0``: a batch is whatever
queued up while the previous one ran, so a lone task never waits.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from dfscan.exceptions import InferenceError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
PredictFn = Callable[[torch.Tensor], Sequence[float]]


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: Future[R] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    failed_batches: int = 0


class MicroBatcher(Generic[T, R]):
    """Collects single items from many threads into batches for one thread running ``run_batch``.

    ``run_batch(items)`` returns one result per item, in order. ``wrap_error`` turns an exception of
    the batch function into the exception each item's future gets.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int,
        max_wait: float,
        name: str,
        wrap_error: Callable[[Exception], Exception] = lambda exc: exc,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._run_batch_fn = run_batch
        self._wrap_error = wrap_error
        self._on_batch = on_batch  # (size, seconds) after each successful batch: a metrics hook
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._queue: queue.Queue[_Pending[T, R] | None] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dfscan-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[R]:
        """Queue one item; the future resolves to its result (or the batch's exception)."""
        if self._closed.is_set():
            raise self._wrap_error(
                RuntimeError(f"the {self.name} batcher is shut down; the job goes back to the queue")
            )
        pending: _Pending[T, R] = _Pending(item)
        self._queue.put(pending)
        return pending.future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking items, run those already submitted, then stop the model thread."""
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self) -> tuple[list[_Pending[T, R]], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = first.enqueued + self.max_wait
        stop = False
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        while True:
            batch, stop = self._collect()
            if batch:
                self._run_batch(batch)
            if stop:
                # Drain whatever was submitted before close() was seen.
                rest: list[_Pending[T, R]] = []
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        rest.append(item)
                for start in range(0, len(rest), self.max_batch):
                    self._run_batch(rest[start : start + self.max_batch])
                return

    def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        started = time.perf_counter()
        try:
            results = list(self._run_batch_fn([pending.item for pending in batch]))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the {self.name} returned {len(results)} results for a batch of {len(batch)}; "
                    "every item must get exactly one"
                )
        except Exception as exc:  # a model, device or database fault: every item of the batch goes back
            self.stats.failed_batches += 1
            log.warning("%s batch of %d failed: %r", self.name, len(batch), exc)
            error = self._wrap_error(exc)
            for pending in batch:
                pending.future.set_exception(error)
            return
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), time.perf_counter() - started)
            except Exception:  # a metrics hook must never fail a batch
                log.exception("the %s batcher's on_batch hook failed", self.name)
        for pending, result in zip(batch, results, strict=True):
            pending.future.set_result(result)


def _model_error(exc: Exception) -> Exception:
    return exc if isinstance(exc, InferenceError) else InferenceError(f"model fault: {exc}")


def _stacked(predict: PredictFn) -> Callable[[list[torch.Tensor]], list[float]]:
    return lambda items: [float(score) for score in predict(torch.stack(items))]


class DynamicBatcher(MicroBatcher[torch.Tensor, float]):
    """Feeds one model thread: each item is a (3, H, W) tensor, each result its p(fake)."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch: int,
        max_wait: float,
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        super().__init__(
            _stacked(predict),
            max_batch=max_batch,
            max_wait=max_wait,
            name=name,
            wrap_error=_model_error,
            on_batch=on_batch,
        )
