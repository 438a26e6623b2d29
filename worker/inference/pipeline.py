"""Scan a stream of images with a detector: fetch, decode and preprocess overlapped with the model.

Pure: no database, no broker. The local CLI and the Celery worker are thin edges around
:func:`scan`. While the model runs batch k on the calling thread, a small thread pool already reads,
decodes and preprocesses batch k+1 (torch releases the GIL inside the forward), so decoding is
hidden behind compute.

Each item fails on its own: a bad URL or a corrupt file yields a failed result with its stable
error code, and the rest of its batch is scored. Only a model fault (InferenceError) fails a whole
batch, with a retryable result per item so a worker can put those jobs back on the queue.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import torch

from dfscan.exceptions import DfscanError, InferenceError
from worker.inference.images import ImagePolicy, image_sha256
from worker.inference.model import Detector
from worker.inference.preprocess import PreprocessConfig, load_pixels
from worker.inference.sources import SourcePolicy, read_source

logger = logging.getLogger(__name__)

DONE = "done"
FAILED = "failed"


@dataclass(frozen=True)
class ScanItem:
    """One image to scan: ``key`` is the caller's identifier (job id, path), ``source`` a URL or path."""

    key: str
    source: str


@dataclass
class ScanResult:
    """The verdict (or the failure) for one item. Times are milliseconds spent on this item."""

    key: str
    source: str
    status: str  # "done" | "failed"
    fake_score: float | None
    label: str | None  # "real" | "fake"
    threshold: float
    model_version: str
    sha256: str | None
    n_bytes: int | None
    width: int | None
    height: int | None
    error_code: str | None
    error: str | None
    fetch_ms: float
    decode_ms: float
    infer_ms: float
    cached: bool
    retryable: bool = False  # a failure the world may heal (timeout, 5xx, model fault): worth a retry


@dataclass
class _Prepared:
    item: ScanItem
    pixels: torch.Tensor | None = None
    sha256: str | None = None
    n_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    error: DfscanError | None = None
    fetch_ms: float = 0.0
    decode_ms: float = 0.0


def scan(
    items: Iterable[ScanItem],
    detector: Detector,
    *,
    sources: SourcePolicy,
    images: ImagePolicy,
    batch_size: int = 8,
    threshold: float = 0.5,
    known: Callable[[str], float | None] | None = None,
    workers: int = 2,
) -> Generator[ScanResult, None, None]:
    """Yield exactly one :class:`ScanResult` per item, **in input order**.

    ``items`` is consumed lazily, one batch ahead of the model. ``known(sha256)`` may return a stored
    p(fake) for the same bytes under ``detector.version`` (the exact-duplicate cache); such items,
    and repeats of bytes already scored in this run, skip the model (``cached=True``). ``known`` is
    only ever called from the calling thread, so it may use a database session that is not
    thread-safe; an exception from it is logged and counts as a miss.

    Closing the generator early cancels the preparation work not yet started and waits for the rest.

    The label is ``"fake"`` when ``fake_score >= threshold``, else ``"real"``.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    batches = _batches(items, batch_size)
    memo: dict[str, float] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dfscan-prepare")

    def submit(batch: list[ScanItem]) -> list[Future[_Prepared]]:
        return [pool.submit(_prepare, item, detector.preprocess, sources, images) for item in batch]

    try:
        pending: deque[list[Future[_Prepared]]] = deque(submit(batch) for batch in islice(batches, 1))
        while pending:
            current = pending.popleft()
            # Queue the next batch before waiting on this one: the pool decodes it while the model runs.
            pending.extend(submit(batch) for batch in islice(batches, 1))
            prepared = [future.result() for future in current]
            yield from _score(prepared, detector, threshold, known, memo)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _batches(items: Iterable[ScanItem], size: int) -> Iterator[list[ScanItem]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _prepare(item: ScanItem, cfg: PreprocessConfig, sources: SourcePolicy, images: ImagePolicy) -> _Prepared:
    """Read, hash, decode and preprocess one item; never raises (the error is carried instead)."""
    out = _Prepared(item)
    started = time.perf_counter()
    try:
        data = read_source(item.source, sources)
        fetched = time.perf_counter()
        out.fetch_ms = (fetched - started) * 1000
        out.sha256, out.n_bytes = image_sha256(data), len(data)
        out.pixels, (out.width, out.height) = load_pixels(data, cfg, images)
        out.decode_ms = (time.perf_counter() - fetched) * 1000
    except DfscanError as exc:
        out.error = exc
    except Exception as exc:  # a bug or an unexpected library error must not sink the batch
        logger.exception("unexpected error preparing %s", item.key, extra={"key": item.key})
        out.error = DfscanError(f"unexpected {type(exc).__name__} while reading {item.source!r}: {exc}")
    if out.error is not None:
        out.pixels = None
    return out


def _score(
    prepared: list[_Prepared],
    detector: Detector,
    threshold: float,
    known: Callable[[str], float | None] | None,
    memo: dict[str, float],
) -> Iterator[ScanResult]:
    results: dict[int, ScanResult] = {}
    to_run: dict[str, list[int]] = {}  # sha256 -> positions with those bytes (first one is run)
    for pos, prep in enumerate(prepared):
        if prep.error is not None:
            results[pos] = _result(prep, detector, threshold, error=prep.error)
            continue
        assert prep.sha256 is not None
        if prep.sha256 in to_run:
            to_run[prep.sha256].append(pos)
            continue
        score = memo.get(prep.sha256)
        if score is None:
            score = _lookup(known, prep.sha256)
        if score is not None:
            results[pos] = _result(prep, detector, threshold, score=score, cached=True)
        else:
            to_run[prep.sha256] = [pos]

    if to_run:
        firsts = [positions[0] for positions in to_run.values()]
        tensors = [prepared[pos].pixels for pos in firsts]
        pixels = torch.stack([t for t in tensors if t is not None])
        started = time.perf_counter()
        try:
            scores = detector.predict(pixels)
            if len(scores) != len(firsts):
                raise InferenceError(
                    f"the model returned {len(scores)} scores for a batch of {len(firsts)}; "
                    "this is a bug in Detector.predict"
                )
        except InferenceError as exc:
            logger.error(
                "model fault on a batch of %d: %s",
                len(firsts),
                exc,
                extra={"model_version": detector.version},
            )
            for positions in to_run.values():
                for pos in positions:
                    results[pos] = _result(prepared[pos], detector, threshold, error=exc)
        else:
            per_item = (time.perf_counter() - started) * 1000 / len(firsts)
            for score, positions in zip(scores, to_run.values(), strict=True):
                first, *repeats = positions
                memo[prepared[first].sha256 or ""] = score
                results[first] = _result(prepared[first], detector, threshold, score=score, infer_ms=per_item)
                for pos in repeats:
                    results[pos] = _result(prepared[pos], detector, threshold, score=score, cached=True)

    if sorted(results) != list(range(len(prepared))):
        raise InferenceError(
            f"scan produced results for positions {sorted(results)} of a batch of {len(prepared)}; "
            "every item must get exactly one result (this is a bug in the pipeline)"
        )
    for pos in range(len(prepared)):
        yield results[pos]


def _lookup(known: Callable[[str], float | None] | None, sha256: str) -> float | None:
    if known is None:
        return None
    try:
        return known(sha256)
    except Exception:
        logger.warning("duplicate-cache lookup failed for %s; scanning anyway", sha256, exc_info=True)
        return None


def _result(
    prep: _Prepared,
    detector: Detector,
    threshold: float,
    *,
    score: float | None = None,
    error: DfscanError | None = None,
    cached: bool = False,
    infer_ms: float = 0.0,
) -> ScanResult:
    label = None if score is None else ("fake" if score >= threshold else "real")
    return ScanResult(
        key=prep.item.key,
        source=prep.item.source,
        status=FAILED if error is not None else DONE,
        fake_score=score,
        label=label,
        threshold=threshold,
        model_version=detector.version,
        sha256=prep.sha256,
        n_bytes=prep.n_bytes,
        width=prep.width,
        height=prep.height,
        error_code=None if error is None else error.code,
        error=None if error is None else error.message,
        fetch_ms=prep.fetch_ms,
        decode_ms=prep.decode_ms,
        infer_ms=infer_ms,
        cached=cached,
        retryable=error is not None and not error.permanent,
    )
