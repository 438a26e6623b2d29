"""The interactive lane: a bulk backfill cannot starve an urgent image."""

from __future__ import annotations

from sqlalchemy import select

from db.models import ScanJob
from db.session import new_engine, new_session_factory
from tests.fixtures.service import Service
from tests.integration.test_worker_kill import slow_service, wait_for


def test_an_interactive_image_overtakes_a_bulk_backlog(service: Service) -> None:
    client = slow_service(service, 81)
    paths = sorted(str(p) for p in service.images.iterdir())
    bulk = client.submit(paths[:80], client_ref="backfill")
    service.start_worker("--concurrency=8")
    wait_for(service, lambda c: c.get("done", 0) >= 1, 120)
    urgent = client.submit(paths[80:], client_ref="urgent", priority=9)
    urgent.wait(120)
    sessions = new_session_factory(new_engine(service.database_url))
    with sessions() as session:
        (urgent_done,) = session.scalars(
            select(ScanJob.finished_at).where(ScanJob.submission_id == urgent.id)
        ).all()
        bulk_states = session.execute(
            select(ScanJob.state, ScanJob.finished_at).where(ScanJob.submission_id == bulk.id)
        ).all()
    later = [1 for state, finished in bulk_states if state != "done" or finished > urgent_done]
    assert len(later) >= 40, f"the urgent image waited behind {80 - len(later)} of 80 bulk images"
    bulk.wait(180)
