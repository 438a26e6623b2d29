"""Fair share between tenants on the bulk lane: a tenant that floods the queue does not hold back another
tenant's few jobs (dfscan.queueing.fair_level), with a real worker, and every job of the flood still ends."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select

from db import jobs
from db.models import ScanJob
from db.tenants import create_tenant
from dfscan.outbox import send_jobs
from producer.client import ScanClient
from tests.fixtures.service import Service
from tests.integration.test_worker_kill import slow_service, wait_for


def submit_as(client: ScanClient, tenant_id: uuid.UUID, sources: Sequence[str]) -> uuid.UUID:
    """What ScanClient.submit and POST /v1/scans do, for a tenant of our choosing: rows, then messages."""
    with client.sessions.begin() as session:
        submission, new_jobs, _ = jobs.create_submission(session, list(sources), tenant_id=tenant_id)
        pending = [(job.id, job.priority) for job in new_jobs]
        submission_id = submission.id
    assert send_jobs(client.app, client.sessions, pending, fair_share=client.settings.fair_share) == len(
        sources
    )
    return submission_id


def _done(client: ScanClient, submission_id: uuid.UUID) -> int:
    with client.sessions() as session:
        query = select(func.count()).where(ScanJob.submission_id == submission_id, ScanJob.state == "done")
        return int(session.scalar(query) or 0)


def test_a_tenants_few_jobs_go_ahead_of_another_tenants_flood(service: Service) -> None:
    client = slow_service(service, 204)
    paths = sorted(str(p) for p in service.images.iterdir())
    with client.sessions.begin() as session:
        flooder, quiet = create_tenant(session, "flooder").id, create_tenant(session, "quiet").id
    service.start_worker("--concurrency=4")
    flood = submit_as(client, flooder, paths[:200])
    wait_for(service, lambda c: c.get("done", 0) >= 1, 180)
    few = submit_as(client, quiet, paths[200:])
    with client.sessions() as session:
        few_written = session.scalar(select(func.min(ScanJob.created_at)).where(ScanJob.submission_id == few))
    wait_for(service, lambda c: _done(client, few) == 4, 300)
    with client.sessions() as session:
        few_last = session.scalar(select(func.max(ScanJob.finished_at)).where(ScanJob.submission_id == few))
        flood_rows = (
            session.execute(select(ScanJob.finished_at).where(ScanJob.submission_id == flood)).scalars().all()
        )
    assert few_written is not None and few_last is not None
    before = sum(1 for f in flood_rows if f is not None and f <= few_written)
    between = sum(1 for f in flood_rows if f is not None and few_written < f <= few_last)
    waiting = 200 - before
    # The flood still had most of its jobs to go when the quiet tenant came...
    assert waiting >= 100, f"only {waiting} flood jobs were left; the test needs a backlog"
    # ...and the quiet tenant's 4 waited for the few flood jobs in the worker's 4 bulk threads and the
    # few at the steps above theirs, not for the backlog (one FIFO makes this every waiting job).
    assert between <= 24, f"the quiet tenant's 4 jobs waited for {between} of {waiting} flood jobs"
    # Fair share reorders, it loses nothing: the whole flood ends, each job once.
    counts = wait_for(service, lambda c: c.get("done", 0) == 204, 600)
    assert counts.get("queued", 0) == 0 and counts.get("failed", 0) == 0, counts
    assert _done(client, flood) == 200
