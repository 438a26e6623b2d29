"""Two workers on one queue share the load and never judge a job twice.

SIGKILL mid-batch, SIGTERM drain and repeated kills live in tests/integration/faults/test_kills.py,
where each scenario ends in the invariant checker."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from db.models import ScanJob, VerdictRow
from db.session import new_engine, new_session_factory
from producer.client import ScanClient
from tests.fixtures.service import Service, save_slow_vit
from tests.integration.test_service import settings_for, write_images


def state_counts(svc: Service) -> dict[str, int]:
    sessions = new_session_factory(new_engine(svc.database_url))
    with sessions() as session:
        rows = session.execute(select(ScanJob.state, func.count()).group_by(ScanJob.state)).all()
        verdicts = session.scalar(select(func.count()).select_from(VerdictRow)) or 0
    return {**{state: n for state, n in rows}, "verdicts": verdicts}


def wait_for(svc: Service, predicate, timeout: float) -> dict[str, int]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    counts = state_counts(svc)
    while time.monotonic() < deadline:
        counts = state_counts(svc)
        if predicate(counts):
            return counts
        time.sleep(0.2)
    raise AssertionError(f"timed out; counts are {counts}")


def slow_service(svc: Service, n: int) -> ScanClient:
    model = save_slow_vit(svc.tmp / "slow-model")
    svc.env["DFSCAN_MODEL"] = str(model)
    write_images(svc.images, n, size=(320, 240))
    return ScanClient(settings_for(svc))


def test_two_workers_share_one_queue_and_never_judge_a_job_twice(service: Service) -> None:
    client = slow_service(service, 48)
    first = service.start_worker("--concurrency=8", "--name=w1@test")
    second = service.start_worker("--concurrency=8", "--name=w2@test")
    sub = client.submit(sorted(str(p) for p in service.images.iterdir()))
    assert sub.wait(180)["done"] == 48
    sessions = new_session_factory(new_engine(service.database_url))
    with sessions() as session:
        per_worker = dict(
            session.execute(select(VerdictRow.worker, func.count()).group_by(VerdictRow.worker)).all()
        )
        total = session.scalar(select(func.count()).select_from(VerdictRow))
    assert total == 48
    assert len(per_worker) == 2, f"one worker did everything: {per_worker}"
    assert min(per_worker.values()) >= 8, per_worker
    assert first.proc.poll() is None and second.proc.poll() is None
