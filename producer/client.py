"""The producer's Python API: submit image sources, wait, read results.

Importing this module imports no torch and no transformers: a moderation backend installs dfscan
without the ``worker`` extra and submits from here::

    client = ScanClient()
    submission = client.submit(["https://example.com/a.jpg"], client_ref="post-123")
    submission.wait(timeout=60)
    for row in submission.results():
        print(row.source, row.label, row.fake_score)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, results
from db.results import Page
from db.session import new_engine, new_session_factory
from dfscan.exceptions import BadArgumentError, QueueFullError, UnknownIdError, WaitTimeoutError
from dfscan.ids import parse_id
from dfscan.options import parse_options
from dfscan.outbox import queue_depth, send_jobs
from dfscan.queueing import new_celery_app
from dfscan.settings import Settings, get_settings
from dfscan.urlguard import check_callback_url
from dfscan.webhooks import parse_events


@dataclass
class Submission:
    """One client call: its jobs, and how to follow them."""

    id: uuid.UUID
    job_ids: list[uuid.UUID]
    created: bool
    _sessions: sessionmaker[Session] = field(repr=False)

    def status(self) -> dict[str, int]:
        """Counts by state: queued, running, done, failed, total."""
        with self._sessions() as session:
            return results.submission_counts(session, self.id)

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll: float = 0.5,
        on_progress: Callable[[dict[str, int]], None] | None = None,
    ) -> dict[str, int]:
        """Block until every job is done or failed (or ``timeout`` passes); returns the last counts."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            counts = self.status()
            if on_progress is not None:
                on_progress(counts)
            if counts["done"] + counts["failed"] >= counts["total"]:
                return counts
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"submission {self.id} not finished after {timeout:.0f}s: {counts}; "
                    "is a worker running (`dfscan worker --queues inference`)?"
                )
            time.sleep(poll)

    def results(self, *, label: str | None = None) -> list[results.ResultRow]:
        with self._sessions() as session:
            return results.results(session, submission_id=self.id, label=label)


class ScanClient:
    """Submits scan jobs: rows in the database first, then one message per image."""

    def __init__(self, settings: Settings | None = None, *, app: Celery | None = None) -> None:
        self.settings = settings or get_settings()
        self.engine = new_engine(self.settings.database_url)
        self.sessions = new_session_factory(self.engine)
        self.app = app or new_celery_app(self.settings)

    def submit(
        self,
        sources: Sequence[str],
        *,
        client_ref: str | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        wait_for_capacity: float | None = None,
        callback_url: str | None = None,
        callback_events: Sequence[str] | None = None,
        explain: bool | None = None,
        faces: str | None = None,
    ) -> Submission:
        """Queue one job per source. ``idempotency_key`` makes a retried call return the first one.

        ``callback_url`` receives signed webhook events (``callback_events``: ``job.completed``,
        ``submission.completed``; default both). It is checked here by the same function as every
        other intake (``dfscan.urlguard.check_callback_url``: CALLBACK_URL_TOO_LONG past 2,048
        characters, UNSUPPORTED_SOURCE for a non-http(s) URL or one with control characters,
        BLOCKED_DESTINATION for an internal address not in DFSCAN_WEBHOOK_ALLOWLIST) and again,
        resolved, at every delivery. Reusing ``idempotency_key`` with other sources or another callback
        raises IDEMPOTENCY_CONFLICT; a bad argument BAD_ARGUMENT (both are also ValueErrors).

        ``explain`` (a heatmap per judged region) and ``faces`` (``auto``, ``require`` or ``off``) are
        this submission's own options (dfscan/options.py); None leaves each to the worker's settings. A
        value dfscan does not know raises BAD_OPTION (BadOptionError, a ValueError) before anything is stored.

        Past ``DFSCAN_QUEUE_MAX_DEPTH`` queued messages this raises QueueFullError at once, or, with
        ``wait_for_capacity=SECONDS``, waits up to that long for the queue to drain.
        """
        if not sources:
            raise BadArgumentError("nothing to submit: give at least one source")
        options = parse_options(explain, faces)
        events = None
        if callback_url is not None:
            check_callback_url(callback_url, self.settings.webhook_allowlist)
            try:
                events = parse_events(",".join(callback_events) if callback_events else None)
            except ValueError as exc:
                raise BadArgumentError(str(exc)) from None
        elif callback_events:
            raise BadArgumentError("callback_events needs a callback_url")
        self._check_capacity(len(sources), wait_for_capacity)
        with self.sessions.begin() as session:
            submission, new_jobs, created = jobs.create_submission(
                session,
                list(sources),
                client_ref=client_ref,
                priority=priority,
                idempotency_key=idempotency_key,
                callback_url=callback_url,
                callback_events=events,
                options=options.stored(),
            )
            submission_id = submission.id
            job_ids = [job.id for job in new_jobs]
            unsent = [(job.id, job.priority) for job in new_jobs if job.enqueued_at is None]
        send_jobs(
            self.app,
            self.sessions,
            unsent,
            per_message=self.settings.jobs_per_message,
            fair_share=self.settings.fair_share,
        )
        return Submission(submission_id, job_ids, created, self.sessions)

    def submission(self, submission_id: uuid.UUID | str) -> Submission:
        """A stored submission; BAD_ARGUMENT for a malformed id, UNKNOWN_ID for one that names nothing."""
        sid = parse_id(submission_id, "submission id")
        with self.sessions() as session:
            job_ids = [row.job_id for row in results.results(session, submission_id=sid)]
        if not job_ids:
            raise UnknownIdError(f"no submission {sid}")
        return Submission(sid, job_ids, False, self.sessions)

    def results(
        self,
        *,
        submission_id: uuid.UUID | str | None = None,
        label: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[results.ResultRow]:
        """Jobs with their verdicts in submission order (see :meth:`page` for newest first, filters
        and paging)."""
        sid = parse_id(submission_id, "submission id") if submission_id else None
        with self.sessions() as session:
            return results.results(session, submission_id=sid, label=label, since=since, limit=limit)

    def page(
        self,
        *,
        submission_id: uuid.UUID | str | None = None,
        label: str | None = None,
        since: datetime | None = None,
        client_ref: str | None = None,
        error_code: str | None = None,
        limit: int = 100,
        cursor: uuid.UUID | str | None = None,
    ) -> Page:
        """One page of results, newest first; pass ``page.next_cursor`` as ``cursor`` for the next.
        Malformed ids are BAD_ARGUMENT; an unknown cursor is UNKNOWN_ID."""
        sid = parse_id(submission_id, "submission id") if submission_id else None
        after = parse_id(cursor, "cursor (a job id)") if cursor else None
        with self.sessions() as session:
            return results.page(
                session,
                submission_id=sid,
                label=label,
                since=since,
                client_ref=client_ref,
                error_code=error_code,
                limit=limit,
                cursor=after,
            )

    def _check_capacity(self, n: int, wait_for_capacity: float | None) -> None:
        limit = self.settings.queue_max_depth
        deadline = time.monotonic() + (wait_for_capacity or 0)
        while True:
            depth = queue_depth(self.settings.broker_url)
            if depth + n <= limit:
                return
            if wait_for_capacity is None or time.monotonic() >= deadline:
                raise QueueFullError(
                    f"the inference queue holds {depth} messages and {n} more would pass "
                    f"DFSCAN_QUEUE_MAX_DEPTH={limit}; retry later, or submit with --wait-for-capacity"
                )
            time.sleep(0.5)
