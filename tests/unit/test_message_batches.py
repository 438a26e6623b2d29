"""A batch of messages: one claim and one verdict write for all of them, and a write the database refuses
fails only the message it belongs to (worker/runtime.py), on a migrated SQLite database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from db.migrate import upgrade
from db.models import ScanJob, VerdictRow
from db.session import new_engine, new_session_factory
from dfscan.verdicts import Verdict
from tests.fixtures.databases import sqlite_url  # noqa: F401
from worker.runtime import Handled, InferenceRuntime


@pytest.fixture
def runtime(sqlite_url: str) -> Iterator[tuple[InferenceRuntime, list[str]]]:  # noqa: F811
    """The runtime's database half (claims and verdict writes) on a fresh database, and the statements
    it sends (no model, no batcher threads)."""
    upgrade(sqlite_url)
    engine = new_engine(sqlite_url)
    sent: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement.split(None, 1)[0].upper())

    rt = InferenceRuntime.__new__(InferenceRuntime)
    rt.sessions = new_session_factory(engine)
    rt.name = "host:1"
    rt.settings = type("S", (), {"lease_seconds": 60, "max_attempts": 3})()  # type: ignore[assignment]
    yield rt, sent
    engine.dispose()


def _jobs(sessions: sessionmaker[Session], n: int) -> list[uuid.UUID]:
    with sessions.begin() as s:
        _, rows, _ = jobs.create_submission(s, [f"/img/{i}.jpg" for i in range(n)])
        return [row.id for row in rows]


def _done(source: str, score: float = 0.9) -> Verdict:
    return Verdict(
        source=source,
        status="done",
        label="fake" if score >= 0.5 else "real",
        fake_score=score,
        threshold=0.5,
        model_version="m1",
        image_sha256=uuid.uuid4().hex * 2,
        image_format="JPEG",
        n_bytes=100,
        width=8,
        height=8,
    )


def _judged(handled: Handled, outcomes: list[Verdict | Exception]) -> Handled:
    handled.pending = []
    for outcome in outcomes:
        future: Future[Verdict | Exception] = Future()
        future.set_result(outcome)
        handled.pending.append(future)
    handled.outcomes = outcomes
    return handled


def test_a_batch_of_messages_is_one_claim_and_one_verdict_write(
    runtime: tuple[InferenceRuntime, list[str]],
) -> None:
    rt, sent = runtime
    ids = _jobs(rt.sessions, 6)
    messages = [
        (ids[0],),
        (ids[1],),
        (ids[2], ids[3]),
        (ids[4],),
        (ids[5],),
        (ids[0],),
    ]  # one delivered twice
    sent.clear()
    claimed = rt.claim([job_id for message in messages for job_id in message])
    assert sorted(claimed) == sorted(ids)
    assert sent.count("UPDATE") == 1, sent
    handled = [
        _judged(Handled({j: claimed[j] for j in message}), [_done(claimed[j].source) for j in message])
        for message in messages[:-1]
    ]
    sent.clear()
    rt._write(handled)
    assert sent.count("UPDATE") == 1 and sent.count("INSERT") >= 1, sent
    assert all(all(h.recorded.values()) and len(h.recorded) == len(h.claimed) for h in handled)
    with rt.sessions() as s:
        assert s.scalar(select(VerdictRow.id).where(VerdictRow.job_id == ids[3])) is not None
        assert set(s.scalars(select(ScanJob.state))) == {"done"}
    # The same messages again (a redelivery): nothing is claimed, nothing written twice.
    assert rt.claim(ids) == {}


def test_a_refused_write_fails_only_its_message(runtime: tuple[InferenceRuntime, list[str]]) -> None:
    rt, _ = runtime
    ids = _jobs(rt.sessions, 3)
    claimed = rt.claim(ids)
    good = _judged(Handled({ids[0]: claimed[ids[0]]}), [_done("a")])
    bad = _judged(Handled({ids[1]: claimed[ids[1]]}), [_done("b", score=1.5)])  # out of range: refused
    down = _judged(Handled({ids[2]: claimed[ids[2]]}), [_done("c")])
    rt._write([good, bad, down])
    assert good.recorded == {ids[0]: True} and good.error is None
    assert isinstance(bad.error, IntegrityError) and bad.recorded == {}
    assert down.recorded == {ids[2]: True}
    with rt.sessions() as s:
        states = dict(s.execute(select(ScanJob.id, ScanJob.state)).tuples().all())
    assert states == {ids[0]: "done", ids[1]: "running", ids[2]: "done"}  # the refused one: its lease


def test_an_outage_or_a_device_fault_leaves_the_message_to_its_task(
    runtime: tuple[InferenceRuntime, list[str]],
) -> None:
    rt, _ = runtime
    ids = _jobs(rt.sessions, 3)
    claimed = rt.claim(ids)
    fault = Verdict(source="a", status="failed", error_code="DEVICE_FAULT", error="gone", retryable=True)
    faulted = _judged(Handled({ids[0]: claimed[ids[0]]}), [fault])
    down = OperationalError("SELECT", {}, ConnectionError("the database went away"))
    lost = _judged(Handled({ids[1]: claimed[ids[1]]}), [down])
    fine = _judged(Handled({ids[2]: claimed[ids[2]]}), [_done("c")])
    assert faulted.fault is fault and faulted.outage is None
    assert lost.outage is down and lost.fault is None
    rt._write([faulted, lost, fine])
    assert faulted.recorded == {} and lost.recorded == {} and fine.recorded == {ids[2]: True}
    with rt.sessions() as s:
        states = dict(s.execute(select(ScanJob.id, ScanJob.state)).tuples().all())
    assert states == {ids[0]: "running", ids[1]: "running", ids[2]: "done"}
