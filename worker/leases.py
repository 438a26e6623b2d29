"""Lease renewal: a job in progress keeps its claim for as long as its worker process is alive.

A claim sets ``lease_until = now + DFSCAN_LEASE_SECONDS``. One small thread per worker process
renews the lease of every job the process holds, in one guarded UPDATE, every lease/3 seconds
(``jobs.renew_leases``). So a job that legitimately runs past its lease (a slow URL, a big image, a
busy model) is never re-sent by the sweeper nor claimed a second time by a redelivered message,
while a job whose worker is gone (SIGKILL, power loss, a partition longer than the lease) stops
being renewed and is recovered by the sweeper once its lease has run out.

The renewal misses at most two beats before the lease ends, so a short database hiccup does not
lose a claim; a longer outage can, and then the sweeper's re-send and the claim guard decide, as
they did before leases were renewed. A task holds its jobs only while it works on them
(``LeaseKeeper.holding``), and the judging path has its own deadlines (fetch deadline, model
timeout), so renewal cannot keep a wedged job alive forever.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from db import jobs

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of the jobs this process holds, from one daemon thread."""

    def __init__(self, sessions: sessionmaker[Session], worker: str, lease_seconds: int) -> None:
        self.sessions = sessions
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.interval = max(0.2, lease_seconds / 3)
        self._held: Counter[uuid.UUID] = Counter()  # a job may be held twice (a duplicate delivery)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0  # statements run (for tests and logs)

    def held(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._held)

    @contextmanager
    def holding(self, job_ids: Iterable[uuid.UUID]) -> Iterator[None]:
        """Keep renewing ``job_ids`` until the block ends (the task has stored their outcomes)."""
        ids = list(job_ids)
        with self._lock:
            self._held.update(ids)
            self._start()
        try:
            yield
        finally:
            with self._lock:
                self._held.subtract(ids)
                for job_id in ids:
                    if self._held[job_id] <= 0:
                        del self._held[job_id]

    def renew_once(self) -> int:
        """Renew every held lease now; returns how many rows were renewed."""
        ids = self.held()
        if not ids:
            return 0
        with self.sessions.begin() as session:
            renewed = jobs.renew_leases(session, ids, worker=self.worker, lease_seconds=self.lease_seconds)
        self.renewals += 1
        if len(renewed) < len(ids):
            log.debug(
                "renewed %d of %d leases (the rest finished or were taken over)", len(renewed), len(ids)
            )
        return len(renewed)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _start(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="dfscan-leases", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew_once()
            except Exception as exc:  # the database is down: the next beat tries again
                log.warning("could not renew %d job leases: %s", len(self.held()), exc)
