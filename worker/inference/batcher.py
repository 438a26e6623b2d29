"""A dynamic batcher: many threads submit one image each, one model thread runs them in batches.

This is how the worker keeps Celery's per-task meaning (acks, retries, time limits, task events)
while still running the model on micro-batches: each Celery task, on a thread of the ``threads``
pool, fetches and preprocesses its own image, then hands the tensor to :class:`DynamicBatcher`
and waits for its score. The model thread takes whatever is waiting, up to ``max_batch`` items,
waiting at most ``max_wait`` seconds for a batch to fill (Triton's dynamic batcher, Ray Serve's
``@serve.batch`` and LitServe work the same way).

A fault of the model fails every item of that batch with the same exception, so each task can put
its own job back on the queue; one bad *image* never reaches this point (decode errors happen in
the task thread). ``close()`` drains: items already submitted are still run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from dfscan.exceptions import InferenceError

log = logging.getLogger(__name__)

PredictFn = Callable[[torch.Tensor], Sequence[float]]


@dataclass
class _Pending:
    pixels: torch.Tensor
    future: Future[float] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    failed_batches: int = 0

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class DynamicBatcher:
    """Collects single images from many threads into batches for one model thread."""

    def __init__(self, predict: PredictFn, *, max_batch: int, max_wait: float, name: str = "model") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()  # swap of the predict function (model promotion)
        self._thread = threading.Thread(target=self._run, name=f"dfscan-{name}", daemon=True)
        self._thread.start()

    def submit(self, pixels: torch.Tensor) -> Future[float]:
        """Queue one (3, H, W) tensor; the future resolves to its p(fake)."""
        if self._closed.is_set():
            raise InferenceError("the model batcher is shut down; the job goes back to the queue")
        item = _Pending(pixels)
        self._queue.put(item)
        return item.future

    def swap(self, predict: PredictFn) -> None:
        """Use another model from the next batch on; the batch in flight finishes on the old one."""
        with self._lock:
            self._predict = predict

    def close(self, timeout: float | None = None) -> None:
        """Stop taking items, run those already submitted, then stop the model thread."""
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self) -> tuple[list[_Pending], bool]:
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
                rest: list[_Pending] = []
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

    def _run_batch(self, batch: list[_Pending]) -> None:
        with self._lock:
            predict = self._predict
        try:
            scores = list(predict(torch.stack([item.pixels for item in batch])))
            if len(scores) != len(batch):
                raise InferenceError(
                    f"the model returned {len(scores)} scores for a batch of {len(batch)}; "
                    "check that the checkpoint is a two-class image classifier"
                )
        except Exception as exc:  # a model or device fault: every item of the batch goes back
            self.stats.failed_batches += 1
            log.exception("batch of %d failed", len(batch))
            error = exc if isinstance(exc, InferenceError) else InferenceError(f"model fault: {exc!r}")
            for item in batch:
                item.future.set_exception(error)
            return
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        for item, score in zip(batch, scores, strict=True):
            item.future.set_result(float(score))
