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

Items carry a lane (:mod:`worker.inference.lanes`: interactive or bulk, by default the lane of the job the
submitting thread works for) and, inside it, a priority: ``FOREGROUND`` (an image and its face crops) or
``BACKGROUND`` (the many inputs of a video job). Interactive items are always batched first; inside a lane
images go before frames. On a CPU no two classes share a batch and only the most urgent class (interactive
images) is batched more than ``background_batch`` (1) at a time, so a full bulk backlog of videos or crowd
images costs an interactive image at most the one bulk step already running (see :class:`MicroBatcher`);
with ``yield_bulk`` no bulk batch starts while an interactive job is in flight in the process, and a bulk
batch runs at the bulk lane's OS priority (:mod:`worker.inference.lanes`).

The worker uses the same mechanism for the messages of concurrent tasks (``worker/runtime.py``: one
claim and one verdict write for a batch of messages), with ``max_wait=0``: a batch is whatever queued
up while the previous one ran, so a lone message never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from dfscan.exceptions import DeviceFaultError, InferenceError
from worker.inference import lanes

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
PredictFn = Callable[[torch.Tensor], Sequence[float]]


# Priorities of a submitted item inside its lane: lower runs first.
FOREGROUND = 0  # an image (and its face crops)
BACKGROUND = 1  # one of many inputs of a long job: a video's sampled frames and their crops
PRIORITIES = (FOREGROUND, BACKGROUND)
# The classes an item can be in, most urgent first: every interactive item before any bulk one.
Class = tuple[int, int]  # (lane, priority)
CLASSES: tuple[Class, ...] = tuple((lane, priority) for lane in lanes.LANES for priority in PRIORITIES)
# A background item that has waited this long is served before newer foreground ones *of its lane*, so a
# steady stream of images slows a video down but never starves it. Lanes never overtake: bulk work waits
# for as long as interactive work is queued (interactive traffic is the small part, by design).
STARVE_AFTER_S = 2.0
# How often a batch thread holding bulk work back looks whether the interactive jobs in flight are done.
_YIELD_POLL_S = 0.02


@dataclass
class _Pending(Generic[T, R]):
    item: T
    cls: Class = CLASSES[0]
    future: Future[R] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    failed_batches: int = 0
    mixed_batches: int = 0  # batches holding items of more than one class (lane, priority)


class MicroBatcher(Generic[T, R]):
    """Collects single items from many threads into batches for one thread running ``run_batch``.

    ``run_batch(items)`` returns one result per item, in order. ``wrap_error`` turns an exception of
    the batch function into the exception each item's future gets.

    **Lanes and priorities.** Each item has a class: its lane (``lanes.INTERACTIVE`` or ``lanes.BULK``;
    default: the submitting thread's, :func:`lanes.current`) and its priority in the lane (``FOREGROUND``,
    default, or ``BACKGROUND``). A batch starts with the oldest item of the most urgent class waiting:
    the interactive lane whenever it has items, and inside a lane foreground first, unless a background
    item has waited ``starve_after`` seconds. ``mix=True`` fills the rest of the batch with the other
    classes, most urgent first (a GPU, where a few more inputs in a batch cost almost nothing);
    ``mix=False`` never puts two classes in one batch and batches every class but the most urgent at most
    ``background_batch`` at a time (a CPU, where every input costs its full forward pass: a bulk input
    sharing an interactive image's batch, or a bulk batch of 8 just started, would add its cost to the
    image's latency). A batch being collected waits up to ``max_wait`` after its oldest item for more of
    them, and gives way at once to more urgent items that arrive meanwhile.

    ``expected`` (optional) says how many items are on their way (the callers now working towards a
    ``submit``): a batch waits its ``max_wait`` only while fewer than that are waiting, so a lone caller
    never waits for company that is not coming, and concurrent callers share one batch.
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
        mix: bool = True,
        background_batch: int | None = None,
        starve_after: float = STARVE_AFTER_S,
        reserved: int = 0,
        yield_bulk: bool = False,
        expected: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._run_batch_fn = run_batch
        self._wrap_error = wrap_error
        self._on_batch = on_batch  # (size, seconds) after each successful batch: a metrics hook
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.mix = mix
        # Most items in a batch of any class but the most urgent (without mixing): what an interactive
        # image arriving just after it started waits for, on a CPU one forward pass per item. Default:
        # 1 without mixing (a CPU), max_batch with it.
        if background_batch is None:
            background_batch = max_batch if mix else 1
        self.background_batch = max(1, background_batch)
        self.starve_after = starve_after
        # Hold bulk batches back while an interactive job is in flight in the process (each bulk item at
        # most lanes.YIELD_CEILING_S): a model or detector step of bulk work would share the CPU with it.
        self.yield_bulk = yield_bulk
        self._expected = expected
        self.stats = BatchStats()
        self._waiting: dict[Class, deque[_Pending[T, R]]] = {cls: deque() for cls in CLASSES}
        self._ready = threading.Condition()
        self._closed = False
        self._stats_lock = threading.Lock()
        # One thread runs batches of every class (the most urgent first); ``reserved`` more run only the
        # most urgent class, interactive images and their crops (Triton's instances reserved per priority
        # level): such an item never waits for a bulk batch, or a video's frame, to end, only for the CPU
        # or device it shares with it.
        self._threads = [
            threading.Thread(target=self._run, args=(frozenset(CLASSES),), name=f"dfscan-{name}", daemon=True)
        ] + [
            threading.Thread(
                target=self._run,
                args=(frozenset(CLASSES[:1]),),
                name=f"dfscan-{name}-interactive{i}",
                daemon=True,
            )
            for i in range(max(0, reserved))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T, *, priority: int = FOREGROUND, lane: int | None = None) -> Future[R]:
        """Queue one item of ``lane`` (default: this thread's job's) and ``priority``; the future resolves
        to its result (or the batch's exception)."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority}")
        cls = (lanes.current() if lane is None else lane, priority)
        if cls not in self._waiting:
            raise ValueError(f"lane must be one of {lanes.LANES}, got {lane}")
        pending: _Pending[T, R] = _Pending(item, cls)
        with self._ready:
            if self._closed:
                raise self._wrap_error(
                    RuntimeError(f"the {self.name} batcher is shut down; the job goes back to the queue")
                )
            self._waiting[cls].append(pending)
            self._ready.notify_all()  # every batch thread looks: some serve one lane only
        return pending.future

    def waiting(self, priority: int = FOREGROUND, lane: int | None = None) -> int:
        """How many items of ``priority`` (in ``lane``, or in any) wait for a batch (not counting the batch
        running)."""
        with self._ready:
            return sum(
                len(queue) for (ln, p), queue in self._waiting.items() if p == priority and lane in (None, ln)
            )

    def close(self, timeout: float | None = None) -> None:
        """Stop taking items, run those already submitted, then stop the batch thread."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()  # every batch thread looks: some serve one lane only
        for thread in self._threads:
            thread.join(timeout)

    def _head(self, now: float, serves: frozenset[Class]) -> Class | None:
        """The class the next batch starts with: the most urgent lane with items waiting, and in it the
        most urgent priority, unless a less urgent item of that lane has waited ``starve_after`` seconds
        (then the class of the oldest such item)."""
        for lane in lanes.LANES:
            waiting = [(lane, p) for p in PRIORITIES if (lane, p) in serves and self._waiting[(lane, p)]]
            if not waiting:
                continue
            starving = [
                (self._waiting[cls][0].enqueued, cls)
                for cls in waiting[1:]
                if now - self._waiting[cls][0].enqueued >= self.starve_after
            ]
            return min(starving)[1] if starving else waiting[0]
        return None

    def _collect(self, serves: frozenset[Class]) -> tuple[list[_Pending[T, R]], bool]:
        """The next batch of the classes ``serves`` (empty and True once closed and drained)."""
        with self._ready:
            while True:
                now = time.monotonic()
                head = self._head(now, serves)
                if head is None:
                    if self._closed:
                        return [], True
                    self._ready.wait()
                    continue
                if self._yields(head, now):
                    self._ready.wait(_YIELD_POLL_S)  # interactive jobs in flight: look again shortly
                    continue
                classes = [head] + ([c for c in CLASSES if c != head and c in serves] if self.mix else [])
                limit = self.max_batch if head == CLASSES[0] or self.mix else self.background_batch
                ready = sum(len(self._waiting[cls]) for cls in classes)
                remaining = self._waiting[head][0].enqueued + self.max_wait - now
                if ready >= limit or remaining <= 0 or self._closed:
                    break
                if self._expected is not None and ready >= min(limit, self._expected()):
                    break  # nobody else is on the way: run what is here
                # Wait for the batch to fill; a newly submitted item wakes us up to look again.
                self._ready.wait(min(remaining, self.starve_after))
            batch: list[_Pending[T, R]] = []
            for cls in classes:
                queue = self._waiting[cls]
                while queue and len(batch) < limit:
                    batch.append(queue.popleft())
            return batch, False

    def _yields(self, head: Class, now: float) -> bool:
        """Whether a batch headed by ``head`` waits for interactive jobs in flight (see ``yield_bulk``)."""
        return (
            self.yield_bulk
            and head[0] != lanes.INTERACTIVE
            and lanes.interactive_in_flight() > 0
            and now - self._waiting[head][0].enqueued < lanes.YIELD_CEILING_S
        )

    def _run(self, serves: frozenset[Class]) -> None:
        while True:
            batch, stop = self._collect(serves)
            if stop:
                return
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        started = time.perf_counter()
        try:
            with lanes.os_priority(min(pending.cls[0] for pending in batch)):  # a bulk batch runs niced
                results = list(self._run_batch_fn([pending.item for pending in batch]))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the {self.name} returned {len(results)} results for a batch of {len(batch)}; "
                    "every item must get exactly one"
                )
        except Exception as exc:  # a model, device or database fault: every item of the batch goes back
            with self._stats_lock:
                self.stats.failed_batches += 1
            log.warning("%s batch of %d failed: %r", self.name, len(batch), exc)
            error = self._wrap_error(exc)
            for pending in batch:
                pending.future.set_exception(error)
            return
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            if len({pending.cls for pending in batch}) > 1:
                self.stats.mixed_batches += 1
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), time.perf_counter() - started)
            except Exception:  # a metrics hook must never fail a batch
                log.exception("the %s batcher's on_batch hook failed", self.name)
        for pending, result in zip(batch, results, strict=True):
            pending.future.set_result(result)


# What torch says when a CUDA context is broken for good (every later call in the process fails the
# same way): c10/cuda/CUDAException.h, cudaGetErrorString, cuBLAS/cuDNN execution failures, NCCL.
STICKY_DEVICE_ERRORS = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "uncorrectable ecc error",
    "hardware stack error",
    "cuda error: an illegal",
    "cuda error: unknown error",
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "cudnn_status_internal_error",
    "cuda driver error",
    "nvml_success == r internal assert failed",
)


def is_sticky_device_error(exc: BaseException) -> bool:
    """True when ``exc`` says the device context of this process is broken for good."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(mark in text for mark in STICKY_DEVICE_ERRORS)


def model_error(exc: Exception, what: str = "model") -> Exception:
    """The exception every item of a failed batch gets: DEVICE_FAULT for a sticky device error (the
    process must go), else INFERENCE_FAILED (the jobs go back and are tried again)."""
    if isinstance(exc, InferenceError):
        return exc
    if is_sticky_device_error(exc):
        return DeviceFaultError(
            f"{what} fault, the device is unusable in this process: {type(exc).__name__}: {exc}"
        )
    return InferenceError(f"{what} fault: {exc}")


def _model_error(exc: Exception) -> Exception:
    return model_error(exc)


# The name of a DynamicBatcher's first model; others are named by the caller (``second``).
PRIMARY = "primary"
# One model input: which model judges it, and its (3, H, W) tensor (each model's own preprocessing).
ModelInput = tuple[str, torch.Tensor]


def _grouped(models: Mapping[str, PredictFn]) -> Callable[[list[ModelInput]], list[float]]:
    """A batch function over inputs for several models: each model runs once on its own inputs (stacked),
    and the results come back in the batch's order."""

    def run(items: list[ModelInput]) -> list[float]:
        results: list[float] = [0.0] * len(items)
        by_model: dict[str, list[int]] = {}
        for index, (name, _) in enumerate(items):
            by_model.setdefault(name, []).append(index)
        for name, indices in by_model.items():
            scores = models[name](torch.stack([items[i][1] for i in indices]))
            if len(scores) != len(indices):
                raise RuntimeError(
                    f"the {name} model returned {len(scores)} results for a batch of {len(indices)}; "
                    "every item must get exactly one"
                )
            for index, score in zip(indices, scores, strict=True):
                results[index] = float(score)
        return results

    return run


class DynamicBatcher(MicroBatcher[ModelInput, float]):
    """Feeds the models: each item is a (3, H, W) tensor for one model, each result its p(fake). One
    model thread for every lane plus ``reserved`` (1) for interactive inputs only.

    ``predict`` is the first model (``PRIMARY``); ``others`` more models by name (a second opinion).
    Every model's inputs wait in the same lanes and run on the same threads, so a second model takes
    its turn with the first instead of competing with it for the CPU; a batch holding inputs of both
    runs each model once on its share."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch: int,
        max_wait: float,
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
        mix: bool = True,
        background_batch: int | None = None,
        reserved: int = 1,
        others: Mapping[str, PredictFn] | None = None,
    ) -> None:
        self.models: dict[str, PredictFn] = {PRIMARY: predict, **(others or {})}
        super().__init__(
            _grouped(self.models),
            max_batch=max_batch,
            max_wait=max_wait,
            name=name,
            wrap_error=_model_error,
            on_batch=on_batch,
            mix=mix,
            background_batch=background_batch,
            reserved=reserved,
            yield_bulk=True,
        )

    def submit(  # type: ignore[override]
        self, item: torch.Tensor, *, priority: int = FOREGROUND, lane: int | None = None, model: str = PRIMARY
    ) -> Future[float]:
        """Queue one input of ``model`` (default: the first)."""
        if model not in self.models:
            raise ValueError(f"no model named {model!r} in this batcher (it has {sorted(self.models)})")
        return super().submit((model, item), priority=priority, lane=lane)
