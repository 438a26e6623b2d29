"""Prometheus metrics of an inference worker, served at ``DFSCAN_METRICS_PORT``.

A ``dfscan worker`` is one process (Celery's threads pool), so prometheus-client's default registry
holds everything, and its process collector adds ``process_resident_memory_bytes`` (RSS) and CPU.
Latencies are histograms, not summaries: quantiles then aggregate across workers
(``histogram_quantile(0.99, sum by (le, stage) (rate(dfscan_stage_seconds_bucket[5m])))``).

The hooks are small functions called from the Celery edge (``worker/tasks.py``, ``worker/runtime.py``)
and a callback of the batcher, so the pure core never imports prometheus.

- ``dfscan_jobs_total{outcome, error_code, lane}``: jobs settled by a task: ``done``, ``failed`` (with
  its code), ``retrying`` (sent again with backoff); lane is the queue the message came from when it
  is one of dfscan's (``inference``, ``inference.interactive``, ``training``), else ``other``: a
  foreign client's routing key never mints a series. The jobs
  a rejected, undecodable message names are counted too (``failed``, ``BAD_MESSAGE``); a rejected
  message that names no job row counts nothing here (it has no job; the worker logs it).
- ``dfscan_images_judged_total{cached}``: images judged (``cached="true"``: answered from an earlier
  verdict of the same bytes and model version, without the model).
- ``dfscan_model_inputs_total`` / ``dfscan_model_batches_total``: their ratio is the real batch size
  (Triton's ``inference_count`` / ``exec_count``); ``dfscan_model_batch_size`` is its histogram and
  ``dfscan_model_batch_seconds`` the forward time per batch.
- ``dfscan_stage_seconds{stage}``: per job: ``queue_wait`` (message sent -> claimed), ``fetch``,
  ``decode``, ``detect`` (face detection: observed only when a detector ran, ``Verdict.detect_ms`` > 0), ``infer`` (handed to the
  batcher -> score, batch wait included), ``db_write`` (verdict written and job marked done).
- ``dfscan_model_info{version, device}``: the model version being served.
- ``dfscan_jobs_in_flight``: jobs claimed by tasks of this worker and not yet settled.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram, Info

from dfscan.exceptions import BadMessageError
from dfscan.queueing import INFERENCE_QUEUE, INTERACTIVE_QUEUE, TRAINING_QUEUE
from dfscan.settings import Settings
from worker.metrics_server import Health, MetricsServer

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

STAGES = ("queue_wait", "fetch", "decode", "detect", "infer", "db_write")
# 1 ms .. 5 min: a cached answer takes a millisecond, a queue wait in a backlog minutes.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)

JOBS = Counter("dfscan_jobs", "Jobs settled by this worker.", ["outcome", "error_code", "lane"])
IMAGES = Counter("dfscan_images_judged", "Images judged (cached: answered without the model).", ["cached"])
MODEL_INPUTS = Counter("dfscan_model_inputs", "Inputs run through the model.")
MODEL_BATCHES = Counter("dfscan_model_batches", "Forward passes of the model.")
BATCH_SIZE = Histogram("dfscan_model_batch_size", "Inputs per forward pass.", buckets=_BATCH)
BATCH_SECONDS = Histogram("dfscan_model_batch_seconds", "Seconds per forward pass.", buckets=_SECONDS)
STAGE_SECONDS = Histogram("dfscan_stage_seconds", "Seconds per job and stage.", ["stage"], buckets=_SECONDS)
MODEL = Info("dfscan_model", "The model version this worker serves.")
IN_FLIGHT = Gauge("dfscan_jobs_in_flight", "Jobs claimed by this worker's tasks and not yet settled.")

for _stage in STAGES:  # every stage exists from the start, so dashboards show 0, not "no data"
    STAGE_SECONDS.labels(stage=_stage)
for _cached in ("true", "false"):
    IMAGES.labels(cached=_cached)


# The lane label's whole vocabulary: dfscan's queues, and "other" for any routing key a client invents.
LANES = (INFERENCE_QUEUE, INTERACTIVE_QUEUE, TRAINING_QUEUE)
OTHER_LANE = "other"


def serve(settings: Settings, health: Health | None = None) -> MetricsServer | None:
    """Serve the default registry at DFSCAN_METRICS_ADDR:DFSCAN_METRICS_PORT (off when unset or 0),
    with idle timeouts and a connection cap (``worker/metrics_server.py``), and the probes ``/livez``
    and ``/readyz`` answered by ``health``."""
    if not settings.metrics_port:
        return None
    try:
        server = MetricsServer(settings.metrics_addr, settings.metrics_port, health=health).start()
    except OSError as exc:  # a port taken by another worker must not stop this one from working
        log.warning("metrics not served on %s:%d: %s", settings.metrics_addr, settings.metrics_port, exc)
        return None
    log.info("metrics on http://%s:%d/metrics", settings.metrics_addr, settings.metrics_port)
    return server


def serving(version: str, device: object) -> None:
    MODEL.info({"version": version, "device": str(device)})


def model_batch(size: int, seconds: float) -> None:
    """The batcher's ``on_batch`` hook."""
    MODEL_INPUTS.inc(size)
    MODEL_BATCHES.inc()
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)


def observe_claims(claims: Iterable[Any], now: datetime | None = None) -> None:
    """Queue wait of claimed jobs: from their message's send (``Claim.queued_at``) to now."""
    now = now or datetime.now(timezone.utc)
    for claim in claims:
        sent = getattr(claim, "queued_at", None)
        if sent is not None:
            STAGE_SECONDS.labels(stage="queue_wait").observe(max(0.0, (now - sent).total_seconds()))


def observe_outcomes(outcomes: Iterable[object]) -> None:
    """Images judged and their stage times, from each judgement (``*_ms`` fields); errors are skipped."""
    for out in outcomes:
        if (
            isinstance(out, BaseException) or getattr(out, "done", True) is False
        ):  # an error, or a failed verdict
            continue
        IMAGES.labels(cached="true" if getattr(out, "cached", False) else "false").inc()
        for stage in ("fetch", "decode", "detect", "infer"):
            ms = getattr(out, f"{stage}_ms", None)
            if stage == "detect" and not ms:  # 0: no face detector ran for this source
                continue
            if ms is not None and not (stage != "fetch" and getattr(out, "cached", False)):
                STAGE_SECONDS.labels(stage=stage).observe(ms / 1000)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time a block as one observation of ``dfscan_stage_seconds{stage=name}``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage=name).observe(time.perf_counter() - started)


def count_settled(summary: object, lane: str) -> None:
    """Count the outcomes a scan task reports: ``{"status": ..., "error_code": ...}`` for one job, or
    ``{"jobs": {id: {...} | "skipped"}}`` for several. Skipped jobs (already final) are not counted."""
    if not isinstance(summary, dict):
        return
    items = summary["jobs"].values() if isinstance(summary.get("jobs"), dict) else [summary]
    for item in items:
        if isinstance(item, dict) and item.get("status") in ("done", "failed", "retrying"):
            JOBS.labels(outcome=item["status"], error_code=item.get("error_code") or "", lane=lane).inc()


def lane_of(task: Any) -> str:
    """The queue a task's message came from, when it is one of :data:`LANES`; else ``other`` (a
    routing key a foreign client chose, or none), so the label stays bounded."""
    info = getattr(task.request, "delivery_info", None) or {}
    key = info.get("routing_key")
    return key if key in LANES else OTHER_LANE


def count_rejected(task: Any, failed: int) -> None:
    """``failed`` jobs named by a message the task rejected as undecodable, failed with BAD_MESSAGE."""
    if failed:
        JOBS.labels(outcome="failed", error_code=BadMessageError.code, lane=lane_of(task)).inc(failed)


def tracked(process: F) -> F:
    """Decorate the task body ``process(task, runtime, job_ids)``: jobs in flight while it runs, and
    its outcomes counted by lane (the queue the message came from)."""

    @functools.wraps(process)
    def wrapper(task: Any, rt: Any, job_ids: tuple[Any, ...], *args: Any, **kwargs: Any) -> Any:
        IN_FLIGHT.inc(len(job_ids))
        try:
            summary = process(task, rt, job_ids, *args, **kwargs)
        finally:
            IN_FLIGHT.dec(len(job_ids))
        count_settled(summary, lane_of(task))
        return summary

    return wrapper  # type: ignore[return-value]
