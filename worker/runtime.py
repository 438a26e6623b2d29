"""What one worker process holds: settings and database sessions (every worker), plus, for an
inference worker, the serving :class:`~worker.inference.judge.Judge` and the micro-batchers that share
database statements between concurrent tasks.

Built once per process, lazily, on the first task (or at worker start-up), never before a fork.
Promotion of a new model version swaps the judge (model, batcher, threshold) as one: a task takes the
judge at its start, so its image is preprocessed for, scored by, and recorded under one model version.
The old batcher keeps running until its in-flight items are done. A training worker builds only the
sessions: no model, no batchers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import hashes, jobs, registry
from db.session import new_engine, new_session_factory
from dfscan.exceptions import BadOptionError
from dfscan.options import options_of
from dfscan.queueing import INTERACTIVE_PRIORITY
from dfscan.settings import Settings, get_settings
from dfscan.tenants import DEFAULT_TENANT_ID
from dfscan.verdicts import Stored, Verdict
from worker import metrics
from worker.inference import lanes
from worker.inference.factory import face_policy, near_policy, new_classifier, new_judge
from worker.inference.hashing.pdq import MediaHash, Near, Similar
from worker.inference.judge import Judge, Known
from worker.inference.model.batcher import MicroBatcher
from worker.leases import LeaseKeeper
from worker.near import NearIndex

log = logging.getLogger(__name__)

# Most job rows one database statement claims, looks up or finishes.
_DB_BATCH = 64
# How long a claim, cache look-up or verdict write waits for the statements of other tasks in progress
# to join it (never when it is the only task: see MicroBatcher's ``expected``). Each statement costs a
# pool checkout, BEGIN, the statement and COMMIT in the worker and in Postgres whatever its size, so at
# one image per message sharing them is most of the CPU per image (bench/feed_cpu.py); 2 ms is what an
# image can wait at each of the three without its latency showing.
_DB_LINGER = 0.002

# How long a replaced batcher stays open for tasks that took it just before a promotion.
_RETIRE_AFTER = 30.0


def lane_of(priority: int) -> int:
    """A job's lane, from its priority: the queue it was sent to (``dfscan.queueing.queue_for_priority``)."""
    return lanes.INTERACTIVE if priority >= INTERACTIVE_PRIORITY else lanes.BULK


def _outcome(
    judge: Judge,
    source: str,
    lane: int,
    similar: Similar | None = None,
    known: Known | None = None,
    options: Mapping[str, Any] | None = None,
) -> Verdict | Exception:
    try:  # the job row's options, checked again (BAD_OPTION fails the job: a retry cannot help)
        judge = judge.for_options(options_of(options))
    except BadOptionError as exc:
        return Verdict(
            source=source, status="failed", error_code=exc.code, error=exc.message, retryable=False
        )
    try:
        with lanes.running_in(lane):  # every batcher and decode slot below serves it in its lane
            return judge.judge(source, similar=similar, known=known)
    except (
        Exception
    ) as exc:  # only the duplicate-cache and near-duplicate look-ups raise: the database is down
        return exc


class WorkerRuntime:
    """Settings, a name for this process, and database sessions."""

    def __init__(
        self, settings: Settings | None = None, *, pool_size: int = 5, pre_ping: bool = True
    ) -> None:
        self.settings = settings or get_settings()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.engine = new_engine(
            self.settings.database_url, pool_size=pool_size, max_overflow=10, pool_pre_ping=pre_ping
        )
        self.sessions: sessionmaker[Session] = new_session_factory(self.engine)
        # Reads that need no transaction (the duplicate cache): no BEGIN/ROLLBACK round trip.
        self.reads: sessionmaker[Session] = new_session_factory(
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    def close(self) -> None:
        self.engine.dispose()


class InferenceRuntime(WorkerRuntime):
    """An inference worker: the serving judge and batched claims, cache look-ups and verdict writes."""

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        # One pooled connection per task thread (`dfscan worker` runs 2 x batch size threads): with
        # SQLAlchemy's default 5 + 10 overflow, busy threads opened and closed a connection per query.
        # No ping before each checkout (a round trip per statement, a fifth of the worker's CPU per
        # image): a connection the server dropped fails its statement, SQLAlchemy then replaces every
        # pooled connection at once, and the task takes the database-outage path (retry with backoff,
        # the job row untouched or left to its lease), as it does for an outage mid-statement.
        super().__init__(settings, pool_size=max(5, 2 * settings.batch_size), pre_ping=False)
        self._judge: Judge | None = None
        self._lock = threading.Lock()
        # Set when the device failed for good (DEVICE_FAULT): tasks take no more jobs, the process ends.
        self.broken: str | None = None
        self._tasks = 0  # tasks between their claim and their verdict write: who may join a statement
        self._tasks_lock = threading.Lock()
        # The database round trips of concurrent tasks share statements: a batch is whatever queued
        # up while the previous statement ran (max_wait 0), so a lone task never waits for company.
        self._claims: MicroBatcher[uuid.UUID, jobs.Claim | None] = MicroBatcher(
            self._claim_batch,
            max_batch=_DB_BATCH,
            max_wait=_DB_LINGER,
            name="claim",
            expected=self.in_progress,
        )
        self._lookups: MicroBatcher[tuple[str, str, uuid.UUID], Stored | None] = MicroBatcher(
            self._lookup_batch,
            max_batch=_DB_BATCH,
            max_wait=_DB_LINGER,
            name="cache lookup",
            expected=self.in_progress,
        )
        # Judges the images of a message of several jobs side by side (one thread per image in flight).
        self._judge_pool = ThreadPoolExecutor(
            max_workers=max(4, 2 * self.settings.batch_size), thread_name_prefix="dfscan-judge"
        )
        self._finishes: MicroBatcher[dict[str, Any], bool] = MicroBatcher(
            self._finish_batch,
            max_batch=_DB_BATCH,
            max_wait=_DB_LINGER,
            name="verdict write",
            expected=self.in_progress,
        )
        self.leases = LeaseKeeper(self.sessions, self.name, self.settings.lease_seconds)
        # Every verdict hash and bank entry, kept in step with the database (worker/near.py).
        self.near = NearIndex(self.sessions, near_policy(self.settings), reuse=self.settings.near_duplicates)

    # --- the job rows, batched across concurrent tasks ------------------------------------------

    @contextmanager
    def working(self) -> Iterator[None]:
        """Count a task in progress for the block (its claim, look-ups and verdict writes may be shared)."""
        with self._tasks_lock:
            self._tasks += 1
        try:
            yield
        finally:
            with self._tasks_lock:
                self._tasks -= 1

    def in_progress(self) -> int:
        return self._tasks

    def claim(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, jobs.Claim]:
        """Claim jobs for this worker: ``{job_id: Claim(source, attempts, priority)}`` for those claimed (the others
        are final, missing or out of attempts: nothing to do)."""
        futures = [(job_id, self._claims.submit(job_id)) for job_id in job_ids]
        claimed = {job_id: future.result() for job_id, future in futures}
        metrics.observe_claims(got for got in claimed.values() if got is not None)
        return {job_id: got for job_id, got in claimed.items() if got is not None}

    def finish(
        self, done: Sequence[tuple[uuid.UUID, Verdict]], tenants: dict[uuid.UUID, uuid.UUID] | None = None
    ) -> list[bool]:
        """Store done verdicts and mark their jobs done; True where this call made the outcome.
        ``tenants``: each job's tenant, stored with its hashes (the default tenant when absent)."""
        tenants = tenants or {}
        futures = [
            self._finishes.submit(
                {
                    "job_id": job_id,
                    **jobs.done_fields(verdict, worker=self.name),
                    "tenant_id": tenants.get(job_id, DEFAULT_TENANT_ID),
                }
            )
            for job_id, verdict in done
        ]
        return [future.result() for future in futures]

    def tenants(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """The tenant of each job."""
        with self.sessions() as session:
            return hashes.job_tenants(session, job_ids)

    def similar_for(self, tenant_id: uuid.UUID) -> Similar:
        """The near-duplicate look-up of one tenant's sources."""

        def similar(hashed: MediaHash, version: str) -> Near | None:
            return self.near.similar(hashed, version, tenant_id)

        return similar

    def judge_many(
        self,
        sources: Sequence[str],
        lane: int = lanes.BULK,
        tenants: Sequence[uuid.UUID] | None = None,
        options: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Verdict | Exception]:
        """Judge each source with the serving model, concurrently (fetch and decode overlap), in ``lane``;
        ``tenants`` (one per source, default tenant when None) scopes its near-duplicate look-up;
        ``options`` (one per source, as the job row stores them) are its job's own (dfscan/options.py).
        A verdict per source, done or failed; an exception only where a database look-up failed."""
        judge = self.judge()  # one model version for the whole message
        owners = list(tenants or [DEFAULT_TENANT_ID] * len(sources))
        asked = list(options or [None] * len(sources))
        looks = [self.similar_for(t) for t in owners]
        knowns = [self.known_for(t) for t in owners]
        if len(sources) == 1:
            return [_outcome(judge, sources[0], lane, looks[0], knowns[0], asked[0])]
        rows = list(zip(sources, looks, knowns, asked, strict=True))
        return list(self._judge_pool.map(lambda t: _outcome(judge, t[0], lane, t[1], t[2], t[3]), rows))

    def known_for(self, tenant_id: uuid.UUID) -> Known:
        """The exact-bytes duplicate cache of one tenant's verdicts (tenants never see each other's)."""
        return lambda sha256, version: self.known(sha256, version, tenant_id)

    def known(self, sha256: str, version: str, tenant_id: uuid.UUID = DEFAULT_TENANT_ID) -> Stored | None:
        """The duplicate cache, batched across concurrent tasks (raises when the database is down)."""
        return self._lookups.submit((sha256, version, tenant_id)).result()

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

    def _lookup_batch(self, keys: list[tuple[str, str, uuid.UUID]]) -> list[Stored | None]:
        by_owner: dict[tuple[str, uuid.UUID], list[str]] = {}
        for sha, version, tenant in keys:
            by_owner.setdefault((version, tenant), []).append(sha)
        with self.reads() as session:
            found = {
                (sha, version, tenant): score
                for (version, tenant), shas in by_owner.items()
                for sha, score in jobs.cached_verdicts(session, shas, version, tenant_id=tenant).items()
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

    def judge(self) -> Judge:
        """The serving judge (model, batcher, threshold), loaded on first use."""
        with self._lock:
            if self._judge is None:
                self._judge = self._load_judge()
            return self._judge

    def reload(self) -> str:
        """Load the promoted version (or DFSCAN_MODEL) and swap it in if it differs. Returns the version.

        A task takes the judge at its start, so its image is preprocessed for, scored by and recorded
        under one model version; the replaced judge keeps running until its in-flight images are done.
        """
        new = self._load_judge()
        with self._lock:
            old = self._judge
            if old is not None and old.version == new.version:
                # Same weights: keep the running batcher, take the new threshold.
                self._judge = old.with_threshold(new.threshold)
            else:
                self._judge = new
        if old is not None and old.version == new.version:
            new.close()
        elif old is not None:
            timer = threading.Timer(_RETIRE_AFTER, old.close)
            timer.daemon = True
            timer.start()
        log.info("serving %s (threshold %.4f)", new.version, new.threshold)
        return new.version

    def _load_judge(self) -> Judge:
        ref, revision, threshold = self.settings.model, self.settings.model_revision, self.settings.threshold
        trained_on_faces = None
        try:
            with self.sessions() as session:
                promoted = registry.current_version(session)
                if promoted is not None:
                    ref, revision = promoted.path or promoted.source, None
                    if promoted.threshold is not None:
                        threshold = promoted.threshold
                    trained_on_faces = (promoted.params or {}).get("faces")
        except Exception as exc:  # the registry is optional: no promotion table yet, DB down at start
            log.warning("could not read the promoted model version, using DFSCAN_MODEL: %s", exc)
        started = time.monotonic()
        detector = new_classifier(self.settings, model=ref, revision=revision)
        log.info("loaded %s on %s in %.1fs", detector.version, detector.device, time.monotonic() - started)
        faces = face_policy(self.settings, detector, trained_on=trained_on_faces)
        judge = new_judge(
            self.settings,
            detector,
            threshold=threshold,
            known=self.known,
            faces=faces,
            on_batch=metrics.model_batch,
        )
        metrics.serving(judge.version, detector.device)  # the version its verdicts carry
        try:  # the near-duplicate index is built at start (later look-ups read only what arrived since)
            self.near.refresh(force=True)
            log.info("near-duplicate index: %d verdict hashes, %d bank entries", *self.near.size)
        except Exception as exc:  # the database is down at start: the first look-up builds it
            log.warning("could not build the near-duplicate index yet: %s", exc)
        return judge

    def close(self) -> None:
        with self._lock:
            judge, self._judge = self._judge, None
        if judge is not None:
            judge.close(timeout=60)
        self._judge_pool.shutdown(wait=True)
        self.leases.close()
        for batcher in (self._claims, self._lookups, self._finishes):
            batcher.close(timeout=30)
            stats = batcher.stats
            if stats.batches:
                log.info(
                    "%s: %d statements for %d jobs (%.1f a statement, at most %d)",
                    batcher.name,
                    stats.batches,
                    stats.items,
                    stats.items / stats.batches,
                    stats.largest,
                )
        super().close()
