"""What one inference worker process holds: settings, database sessions, the model and its batcher.

Built once per process, lazily, on the first task (or at worker start-up), never before a fork.
Promotion of a new model version swaps ``(detector, batcher)`` as one pair: a task takes the pair
at its start, so its image is preprocessed for, scored by, and recorded under one model version.
The old batcher keeps running until its in-flight items are done.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import jobs, registry
from db.session import new_engine, new_session_factory
from dfscan.settings import Settings, get_settings
from worker import metrics
from worker.inference.batcher import DynamicBatcher, MicroBatcher
from worker.inference.images import ImagePolicy, image_sha256
from worker.inference.model import Detector, load_detector
from worker.inference.preprocess import load_pixels
from worker.inference.sources import SourcePolicy, read_source

log = logging.getLogger(__name__)

# Most job rows one database statement claims, looks up or finishes.
_DB_BATCH = 64

# How long a replaced batcher stays open for tasks that took it just before a promotion.
_RETIRE_AFTER = 30.0


@dataclass(frozen=True)
class Judgement:
    """The outcome of one image, ready for ``jobs.finish_done``."""

    fake_score: float
    label: str
    threshold: float
    model_version: str
    image_sha256: str
    n_bytes: int
    width: int | None
    height: int | None
    fetch_ms: float
    decode_ms: float
    infer_ms: float
    cached: bool


@dataclass(frozen=True)
class Lane:
    """A model and the batcher that feeds it, swapped together on promotion."""

    detector: Detector
    batcher: DynamicBatcher
    threshold: float


def _outcome(judge: Callable[[str], Judgement], source: str) -> Judgement | Exception:
    try:
        return judge(source)
    except Exception as exc:  # carried back to the task, which decides per job
        return exc


def source_policy(settings: Settings) -> SourcePolicy:
    return SourcePolicy(
        allowed_roots=tuple(Path(root) for root in settings.allowed_roots),
        url_allowlist=settings.url_allowlist,
        max_bytes=settings.max_bytes,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        deadline=settings.fetch_deadline,
        max_redirects=settings.max_redirects,
    )


def image_policy(settings: Settings) -> ImagePolicy:
    return ImagePolicy(max_pixels=settings.max_pixels, max_frames=settings.max_frames)


def default_threads(settings: Settings) -> int:
    """torch threads for this process: the setting, else every core (one model thread per process)."""
    return settings.threads or max(1, os.cpu_count() or 1)


class WorkerRuntime:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # One pooled connection per task thread (`dfscan worker` runs 2 x batch size threads): with
        # SQLAlchemy's default 5 + 10 overflow, busy threads opened and closed a connection per query.
        pool_size = max(5, 2 * self.settings.batch_size)
        engine = new_engine(self.settings.database_url, pool_size=pool_size, max_overflow=10)
        self.sessions: sessionmaker[Session] = new_session_factory(engine)
        self.sources = source_policy(self.settings)
        self.images = image_policy(self.settings)
        self._lane: Lane | None = None
        self._lock = threading.Lock()
        # The database round trips of concurrent tasks share statements: a batch is whatever queued
        # up while the previous statement ran (max_wait 0), so a lone task never waits for company.
        self._claims: MicroBatcher[uuid.UUID, jobs.Claim | None] = MicroBatcher(
            self._claim_batch, max_batch=_DB_BATCH, max_wait=0.0, name="claim"
        )
        self._lookups: MicroBatcher[tuple[str, str], float | None] = MicroBatcher(
            self._lookup_batch, max_batch=_DB_BATCH, max_wait=0.0, name="cache lookup"
        )
        # Judges the images of a message of several jobs side by side (one thread per image in flight).
        self._judge_pool = ThreadPoolExecutor(
            max_workers=max(4, 2 * self.settings.batch_size), thread_name_prefix="dfscan-judge"
        )
        self._finishes: MicroBatcher[dict[str, Any], bool] = MicroBatcher(
            self._finish_batch, max_batch=_DB_BATCH, max_wait=0.0, name="verdict write"
        )

    # --- the job rows, batched across concurrent tasks ------------------------------------------

    def claim(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, jobs.Claim]:
        """Claim jobs for this worker: ``{job_id: Claim(source, attempts, priority)}`` for those claimed (the others
        are final, missing or out of attempts: nothing to do)."""
        futures = [(job_id, self._claims.submit(job_id)) for job_id in job_ids]
        claimed = {job_id: future.result() for job_id, future in futures}
        metrics.observe_claims(got for got in claimed.values() if got is not None)
        return {job_id: got for job_id, got in claimed.items() if got is not None}

    def finish(self, done: Sequence[tuple[uuid.UUID, Judgement]]) -> list[bool]:
        """Store the verdicts and mark the jobs done; True where this call made the outcome."""
        futures = []
        for job_id, judgement in done:
            fields = {k: getattr(judgement, k) for k in jobs.VERDICT_FIELDS if k != "worker"}
            futures.append(self._finishes.submit({"job_id": job_id, **fields, "worker": self.name}))
        return [future.result() for future in futures]

    def judge_many(self, sources: Sequence[str]) -> list[Judgement | Exception]:
        """``judge`` each source, concurrently (fetch and decode overlap); an error is returned, not raised."""
        if len(sources) == 1:
            return [_outcome(self.judge, sources[0])]
        return list(self._judge_pool.map(lambda source: _outcome(self.judge, source), sources))

    def _claim_batch(self, job_ids: list[uuid.UUID]) -> list[jobs.Claim | None]:
        with self.sessions.begin() as session:
            claimed = jobs.claim_jobs(
                session,
                job_ids,
                worker=self.name,
                lease_seconds=self.settings.lease_seconds,
                max_attempts=self.settings.max_attempts,
            )
        # A message delivered twice at once: only its first copy gets the claim.
        return [claimed.pop(job_id, None) for job_id in job_ids]

    def _lookup_batch(self, keys: list[tuple[str, str]]) -> list[float | None]:
        by_version: dict[str, list[str]] = {}
        for sha, version in keys:
            by_version.setdefault(version, []).append(sha)
        with self.sessions() as session:
            found = {
                (sha, version): score
                for version, shas in by_version.items()
                for sha, score in jobs.cached_scores(session, shas, version).items()
            }
        return [found.get(key) for key in keys]

    def _finish_batch(self, verdicts: list[dict[str, Any]]) -> list[bool]:
        with self.sessions.begin() as session:
            done = jobs.finish_done_many(session, verdicts)
        out = []
        for verdict in verdicts:
            out.append(verdict["job_id"] in done)
            done.discard(verdict["job_id"])  # a duplicate in the same batch did not make the outcome
        return out

    # --- the model ---------------------------------------------------------------------------

    def lane(self) -> Lane:
        with self._lock:
            if self._lane is None:
                self._lane = self._load_lane()
            return self._lane

    def reload(self) -> str:
        """Load the promoted version (or DFSCAN_MODEL) and swap it in if it differs. Returns the version."""
        new = self._load_lane()
        with self._lock:
            old, self._lane = self._lane, new
        if old is not None and old.detector.version == new.detector.version:
            # Same weights: keep the old batcher, drop the new one (threshold may have changed).
            with self._lock:
                self._lane = Lane(old.detector, old.batcher, new.threshold)
            new.batcher.close()
        elif old is not None:
            timer = threading.Timer(_RETIRE_AFTER, old.batcher.close)
            timer.daemon = True
            timer.start()
        log.info("model lane is %s (threshold %.4f)", new.detector.version, new.threshold)
        return new.detector.version

    def _load_lane(self) -> Lane:
        ref, revision, threshold = self.settings.model, self.settings.model_revision, self.settings.threshold
        try:
            with self.sessions() as session:
                promoted = registry.current_version(session)
                if promoted is not None:
                    ref, revision = promoted.path or promoted.source, None
                    if promoted.threshold is not None:
                        threshold = promoted.threshold
        except Exception as exc:  # the registry is optional: no promotion table yet, DB down at start
            log.warning("could not read the promoted model version, using DFSCAN_MODEL: %s", exc)
        started = time.monotonic()
        detector = load_detector(
            ref,
            revision=revision,
            device=self.settings.device,
            int8=self.settings.int8,
            threads=default_threads(self.settings),
            runtime=self.settings.runtime,
            onnx_cache=self.settings.onnx_cache,
        )
        log.info("loaded %s on %s in %.1fs", detector.version, detector.device, time.monotonic() - started)
        batcher = DynamicBatcher(
            detector.predict,
            max_batch=self.settings.batch_size,
            max_wait=self.settings.batch_wait_ms / 1000,
            on_batch=metrics.model_batch,
        )
        metrics.serving(detector.version, detector.device)
        return Lane(detector, batcher, threshold)

    def close(self) -> None:
        with self._lock:
            lane, self._lane = self._lane, None
        if lane is not None:
            lane.batcher.close(timeout=60)
        self._judge_pool.shutdown(wait=True)
        for batcher in (self._claims, self._lookups, self._finishes):
            batcher.close(timeout=30)

    # --- one image ---------------------------------------------------------------------------

    def judge(self, source: str) -> Judgement:
        """Fetch, decode, preprocess and score one source. Raises DfscanError subclasses."""
        lane = self.lane()
        t0 = time.perf_counter()
        data = read_source(source, self.sources)
        t1 = time.perf_counter()
        sha = image_sha256(data)
        known = self._lookups.submit((sha, lane.detector.version)).result()
        if known is not None:
            return self._judgement(lane, known, sha, len(data), None, (t1 - t0, 0.0, 0.0), cached=True)
        pixels, (width, height) = load_pixels(data, lane.detector.preprocess, self.images)
        t2 = time.perf_counter()
        score = lane.batcher.submit(pixels).result(timeout=600)
        t3 = time.perf_counter()
        return self._judgement(
            lane, score, sha, len(data), (width, height), (t1 - t0, t2 - t1, t3 - t2), cached=False
        )

    @staticmethod
    def _judgement(
        lane: Lane,
        score: float,
        sha: str,
        n_bytes: int,
        size: tuple[int, int] | None,
        seconds: tuple[float, float, float],
        *,
        cached: bool,
    ) -> Judgement:
        return Judgement(
            fake_score=score,
            label="fake" if score >= lane.threshold else "real",
            threshold=lane.threshold,
            model_version=lane.detector.version,
            image_sha256=sha,
            n_bytes=n_bytes,
            width=size[0] if size else None,
            height=size[1] if size else None,
            fetch_ms=seconds[0] * 1000,
            decode_ms=seconds[1] * 1000,
            infer_ms=seconds[2] * 1000,
            cached=cached,
        )
