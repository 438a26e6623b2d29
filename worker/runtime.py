"""What one worker process holds: settings and database sessions (every worker), plus, for an
inference worker, the serving :class:`~worker.inference.judge.Judge` and the message batcher that
claims, judges and records the messages of concurrent tasks in batches (one claim and one verdict write
for a batch, see ``InferenceRuntime.handle``).

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
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, registry
from db.session import is_outage, new_engine, new_session_factory
from dfscan.exceptions import BadOptionError, DeviceFaultError
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

# Most messages one batch takes (one claim and one verdict write), and look-ups one statement runs.
_DB_BATCH = 64
# How long a cache look-up waits for the look-ups of the other images being judged to join it (never
# when it is the only one: see MicroBatcher's ``expected``). Each statement costs a pool checkout and
# the round trip in the worker and in Postgres whatever its size, so at one image per message sharing
# them is much of the CPU per image (bench/feed_cpu.py); 2 ms is what an image can wait without its
# latency showing.
_DB_LINGER = 0.002

# How long a batch waits for its next image to be judged before it writes the verdicts that are ready:
# a message whose image is still being fetched or judged then writes its own (a hung URL never holds the
# batch's other verdicts, nor the next batch). Measured from the last image judged, not from the claim,
# so a starved CPU that judges slowly still writes the batch as one.
_STRAGGLER_S = 0.25

# How long a replaced batcher stays open for tasks that took it just before a promotion.
_RETIRE_AFTER = 30.0


def lane_of(priority: int) -> int:
    """A job's lane, from its priority: the queue it was sent to (``dfscan.queueing.queue_for_priority``)."""
    return lanes.INTERACTIVE if priority >= INTERACTIVE_PRIORITY else lanes.BULK


def lane_of_claims(claims: Iterable[jobs.Claim]) -> int:
    """A message's lane: its most urgent job's (the interactive queue sends one job a message)."""
    return min(lane_of(claim.priority) for claim in claims)


@dataclass
class Handled:
    """What a batch did with one message: the jobs it claimed (in order), each one's outcome (a verdict,
    or the exception of a failed database look-up), and, for the done ones it wrote, whether that write
    made the job's outcome (False: a redelivery finished it first). Failed verdicts, an ``outage`` and a
    device ``fault`` are left to the message's task (retry, fail, give back)."""

    claimed: dict[uuid.UUID, jobs.Claim]
    outcomes: list[Verdict | Exception] = field(default_factory=list)
    # The judgements still running when the batch was written (a slow fetch): the task waits for them and
    # writes this message's verdicts itself (``InferenceRuntime.complete``).
    pending: list[Future[Verdict | Exception]] = field(default_factory=list)
    recorded: dict[uuid.UUID, bool] = field(default_factory=dict)
    # The database refused this message's verdict write (not an outage): its task raises it.
    error: Exception | None = None

    @property
    def outage(self) -> Exception | None:
        """The first database outage a cache or near-duplicate look-up of this message hit."""
        return next((out for out in self.outcomes if isinstance(out, Exception) and is_outage(out)), None)

    @property
    def fault(self) -> Verdict | None:
        """The first verdict of this message saying the device is broken for good."""
        return next(
            (
                out
                for out in self.outcomes
                if isinstance(out, Verdict) and out.error_code == DeviceFaultError.code
            ),
            None,
        )


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
        self._judging = 0  # jobs of running batches being judged: who may join a cache look-up
        self._judging_lock = threading.Lock()
        # The messages of concurrent tasks are handled in batches: one claim, one cache look-up and one
        # verdict write for every message that arrived while the previous batch ran (max_wait 0: a lone
        # message never waits for company). One thread serves both lanes, interactive first, and one
        # more serves only the interactive lane, so a bulk batch being judged never holds an
        # interactive message back; the two also overlap one batch's statements with another's judging.
        self._messages: MicroBatcher[tuple[uuid.UUID, ...], Handled] = MicroBatcher(
            self._handle_batch,
            max_batch=_DB_BATCH,
            max_wait=0.0,
            name="messages",
            mix=False,
            background_batch=_DB_BATCH,
            reserved=1,
        )
        self._lookups: MicroBatcher[tuple[str, str, uuid.UUID], Stored | None] = MicroBatcher(
            self._lookup_batch,
            max_batch=_DB_BATCH,
            max_wait=_DB_LINGER,
            name="cache lookup",
            expected=self.judging,
        )
        # Judge the images of a batch side by side (one thread per image in flight): one pool per lane, so
        # the hung fetches of a bulk batch never hold the threads an interactive batch needs.
        self._judge_pools = {
            lane: ThreadPoolExecutor(
                max_workers=max(4, 2 * self.settings.batch_size), thread_name_prefix=f"dfscan-judge-{name}"
            )
            for lane, name in ((lanes.INTERACTIVE, "interactive"), (lanes.BULK, "bulk"))
        }
        self.leases = LeaseKeeper(self.sessions, self.name, self.settings.lease_seconds)
        # Every verdict hash and bank entry, kept in step with the database (worker/near.py).
        self.near = NearIndex(self.sessions, near_policy(self.settings), reuse=self.settings.near_duplicates)

    # --- the job rows, batched across concurrent tasks ------------------------------------------

    def judging(self) -> int:
        return self._judging

    def handle(self, job_ids: Sequence[uuid.UUID], lane: int) -> Handled:
        """Claim, judge and record a message's jobs in a batch with the messages of other tasks (``lane``:
        the queue the message came from, which batches it joins). Raises what failed the whole batch: a
        claim or verdict write the database refused or could not run (``SQLAlchemyError``)."""
        return self._messages.submit(tuple(job_ids), lane=lane).result()

    def claim(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, jobs.Claim]:
        """Claim jobs for this worker, in one statement: ``{job_id: Claim}`` for those claimed (the others
        are final, missing, held by a live worker or out of attempts: nothing to do)."""
        with self.sessions.begin() as session:
            claimed = jobs.claim_jobs(
                session,
                job_ids,
                worker=self.name,
                lease_seconds=self.settings.lease_seconds,
                max_attempts=self.settings.max_attempts,
            )
        metrics.observe_claims(claimed.values())
        return claimed

    def finish(
        self, done: Sequence[tuple[uuid.UUID, Verdict]], tenants: dict[uuid.UUID, uuid.UUID] | None = None
    ) -> list[bool]:
        """Store done verdicts and mark their jobs done, in one transaction; True where this call made the
        outcome. ``tenants``: each job's tenant, stored with its hashes (the default tenant when absent)."""
        if not done:
            return []
        tenants = tenants or {}
        rows = [
            {
                "job_id": job_id,
                **jobs.done_fields(verdict, worker=self.name),
                "tenant_id": tenants.get(job_id, DEFAULT_TENANT_ID),
            }
            for job_id, verdict in done
        ]
        with self.sessions.begin() as session:
            made = jobs.finish_done_many(session, rows)
        out = []
        for job_id, _ in done:
            out.append(job_id in made)
            made.discard(job_id)  # a duplicate in the same batch did not make the outcome
        return out

    def _handle_batch(self, messages: list[tuple[uuid.UUID, ...]]) -> list[Handled]:
        """One batch of messages: one claim for all their jobs, every claimed image judged side by side
        (the cache look-ups shared), one verdict write for the done ones. A message whose look-up found
        the database down, or whose image hit a device fault, gets nothing written: its task settles it."""
        claimed_at = time.monotonic()  # the batch's near-duplicate look-ups share one index refresh
        claimed = self.claim([job_id for ids in messages for job_id in ids])
        handled: list[Handled] = []
        for ids in messages:  # a job named twice (a message delivered twice at once): its first copy
            mine = {job_id: claimed.pop(job_id) for job_id in dict.fromkeys(ids) if job_id in claimed}
            handled.append(Handled(mine))
        held = [job_id for h in handled for job_id in h.claimed]
        if not held:
            return handled
        with self.leases.holding(held):  # the claim lasts while this worker is alive (worker/leases.py)
            judge = self.judge()  # one model version for the whole batch
            judging = [
                (h, self._judge_async(judge, claim, lane_of_claims(h.claimed.values()), claimed_at))
                for h in handled
                for claim in h.claimed.values()
            ]
            running = {future for _, future in judging}
            while running:  # until every image is judged, or none was for _STRAGGLER_S (a hung fetch)
                finished, running = wait(running, timeout=_STRAGGLER_S, return_when=FIRST_COMPLETED)
                if not finished:
                    break
            for h, future in judging:
                h.pending.append(future)
            ready = [h for h in handled if all(future.done() for future in h.pending)]
            for h in ready:
                h.outcomes, h.pending = [future.result() for future in h.pending], []
            with metrics.stage("db_write"):
                self._write(ready)
        return handled

    def complete(self, handled: Handled) -> None:
        """A message the batch left behind (a judgement still running): wait for it, then write its done
        verdicts (in the task's thread; raises what the write raised)."""
        if not handled.pending:
            return
        handled.outcomes, handled.pending = [future.result() for future in handled.pending], []
        with metrics.stage("db_write"):
            self._write([handled])
        if handled.error is not None:
            raise handled.error

    def _write(self, handled: list[Handled]) -> None:
        """Write the done verdicts of the batch's messages in one transaction. A database outage fails the
        batch (every message retries); a statement the database refuses is written again message by
        message, so only the message it belongs to fails (``Handled.error``), not the batch's others."""
        writable = [h for h in handled if h.outage is None and h.fault is None]  # the others: their tasks
        try:
            self._write_done(writable)
        except SQLAlchemyError as exc:
            if is_outage(exc) or len(writable) < 2:
                raise
            log.warning(
                "a batch's verdict write failed (%r); writing its %d messages one by one", exc, len(writable)
            )
            for h in writable:
                try:
                    self._write_done([h])
                except SQLAlchemyError as one:
                    if is_outage(one):
                        raise
                    h.error = one

    def _write_done(self, handled: list[Handled]) -> None:
        done = [
            (job_id, out)
            for h in handled
            for job_id, out in zip(h.claimed, h.outcomes, strict=True)
            if isinstance(out, Verdict) and out.done
        ]
        tenants = {job_id: h.claimed[job_id].tenant_id for h in handled for job_id in h.claimed}
        made = dict(zip((job_id for job_id, _ in done), self.finish(done, tenants), strict=True))
        for h in handled:
            h.recorded = {job_id: made[job_id] for job_id in h.claimed if job_id in made}

    def _judge_async(
        self, judge: Judge, claim: jobs.Claim, lane: int, claimed_at: float
    ) -> Future[Verdict | Exception]:
        """Judge a claimed job's source in its lane on a thread of the lane's pool (the images of a batch
        side by side: fetch and decode overlap); its near-duplicate look-up sees every verdict committed
        before ``claimed_at``."""
        with self._judging_lock:
            self._judging += 1

        def run() -> Verdict | Exception:
            try:
                similar = self.similar_for(claim.tenant_id, since=claimed_at)
                return _outcome(
                    judge, claim.source, lane, similar, self.known_for(claim.tenant_id), claim.options
                )
            finally:
                with self._judging_lock:
                    self._judging -= 1

        return self._judge_pools[lane].submit(run)

    def similar_for(self, tenant_id: uuid.UUID, since: float | None = None) -> Similar:
        """The near-duplicate look-up of one tenant's sources (``since``: see ``NearIndex.similar``)."""

        def similar(hashed: MediaHash, version: str) -> Near | None:
            return self.near.similar(hashed, version, tenant_id, since=since)

        return similar

    def known_for(self, tenant_id: uuid.UUID) -> Known:
        """The exact-bytes duplicate cache of one tenant's verdicts (tenants never see each other's)."""
        return lambda sha256, version: self.known(sha256, version, tenant_id)

    def known(self, sha256: str, version: str, tenant_id: uuid.UUID = DEFAULT_TENANT_ID) -> Stored | None:
        """The duplicate cache, batched across concurrent tasks (raises when the database is down)."""
        return self._lookups.submit((sha256, version, tenant_id)).result()

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
        # Messages handed over are handled first (they need the judge), then the judge and the rest.
        self._messages.close(timeout=60)
        with self._lock:
            judge, self._judge = self._judge, None
        if judge is not None:
            judge.close(timeout=60)
        for pool in self._judge_pools.values():
            pool.shutdown(wait=True)
        self.leases.close()
        self._lookups.close(timeout=30)
        for batcher, unit in ((self._messages, "messages"), (self._lookups, "look-ups")):
            stats = batcher.stats
            if stats.batches:
                log.info(
                    "%s: %d batches for %d %s (%.1f a batch, at most %d)",
                    batcher.name,
                    stats.batches,
                    stats.items,
                    unit,
                    stats.items / stats.batches,
                    stats.largest,
                )
        super().close()
