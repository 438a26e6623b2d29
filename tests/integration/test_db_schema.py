"""The schema on real PostgreSQL (and SQLite): migrations match the models, constraints hold,
and finish_done is safe under concurrent redelivery."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, migrate
from db.models import VerdictRow
from db.session import new_engine, new_session_factory
from tests.fixtures.databases import pg_url, sqlite_url  # noqa: F401

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHA = "0f" * 32
VERDICT: dict[str, Any] = dict(
    label="fake",
    fake_score=0.8,
    threshold=0.5,
    model_version="m1",
    image_sha256=SHA,
    image_format="PNG",
    n_bytes=10,
    width=4,
    height=4,
    fetch_ms=1.0,
    decode_ms=1.0,
    infer_ms=1.0,
    cached=False,
)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:  # noqa: F811
    migrate.upgrade(pg_url)
    engine = new_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_upgrade_to_head_matches_the_models(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    assert migrate.current(url) is None
    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head() is not None
    assert migrate.check_drift(url) == []
    migrate.upgrade(url)  # already at head: a no-op
    assert migrate.current(url) == migrate.head()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_downgrade_to_base_and_back(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    assert migrate.current(url) is None
    diffs = migrate.check_drift(url)
    added = {d[1].name for d in diffs if d[0] == "add_table"}
    assert added == {
        "submissions",
        "scan_jobs",
        "verdicts",
        "verdict_faces",
        "verdict_frames",
        "model_versions",
        "promotions",
        "training_runs",
        "webhook_deliveries",
        "verdict_hashes",
        "verdict_previews",
        "hash_banks",
        "bank_entries",
        "tenants",
        "api_keys",
        "reviews",
        "uploads",
    }
    assert {d[0] for d in diffs} == {"add_table", "add_index"}
    migrate.upgrade(url)
    assert migrate.check_drift(url) == []


def test_drift_is_detected(pg_url: str) -> None:  # noqa: F811
    migrate.upgrade(pg_url)
    engine = new_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE verdicts DROP COLUMN worker"))
        conn.execute(text("ALTER TABLE scan_jobs DROP CONSTRAINT ck_scan_jobs_failed_iff_error_code"))
        conn.execute(text("DROP INDEX ix_scan_jobs_state_lease_until"))
        conn.execute(text("ALTER TABLE submissions ALTER COLUMN client_ref TYPE varchar(10)"))
    engine.dispose()
    diffs = migrate.check_drift(pg_url)
    flat = [d[0] if isinstance(d, tuple) else d[0][0] for d in diffs]
    assert "add_column" in flat
    assert "add_constraint" in flat
    assert "add_index" in flat
    assert "modify_type" in flat


def test_alembic_cli_upgrades_from_the_environment_url(pg_url: str) -> None:  # noqa: F811
    env = {**os.environ, "DFSCAN_DATABASE_URL": pg_url}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "-c", "alembic.ini", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Running upgrade  -> 0001" in proc.stderr
    assert migrate.current(pg_url) == migrate.head()


def _job(factory: sessionmaker[Session]) -> uuid.UUID:
    with factory.begin() as s:
        _, rows, _ = jobs.create_submission(s, ["a.png"])
        return rows[0].id


def test_constraints_hold_on_postgres(pg_engine: Engine) -> None:
    factory = new_session_factory(pg_engine)
    job_id = _job(factory)
    with factory.begin() as s:
        assert jobs.finish_done(s, job_id, worker="w1", **VERDICT) is True
    with pytest.raises(IntegrityError, match="uq_verdicts_job_id"), factory.begin() as s:
        s.add(VerdictRow(job_id=job_id, worker="w2", **VERDICT))
    other = _job(factory)
    bad_rows = {
        "ck_scan_jobs_failed_iff_error_code": "UPDATE scan_jobs SET state='failed', finished_at=now() WHERE id=:id",
        "ck_scan_jobs_final_has_finished_at": "UPDATE scan_jobs SET state='done' WHERE id=:id",
        "ck_scan_jobs_state_valid": "UPDATE scan_jobs SET state='lost' WHERE id=:id",
        "ck_scan_jobs_attempts_nonnegative": "UPDATE scan_jobs SET attempts=-1 WHERE id=:id",
    }
    for name, statement in bad_rows.items():
        with pytest.raises(IntegrityError, match=name), factory.begin() as s:
            s.execute(text(statement), {"id": str(other)})
    with (
        pytest.raises(IntegrityError, match="ck_scan_jobs_failed_iff_error_code"),
        factory.begin() as s,
    ):
        s.execute(text("UPDATE scan_jobs SET error_code='X' WHERE id=:id"), {"id": str(other)})
    with pytest.raises(IntegrityError, match="ck_verdicts_fake_score_range"), factory.begin() as s:
        s.add(VerdictRow(job_id=other, **{**VERDICT, "fake_score": 1.5}))
    with pytest.raises(IntegrityError, match="fk_verdicts_job_id_scan_jobs"), factory.begin() as s:
        s.add(VerdictRow(job_id=uuid.uuid4(), **VERDICT))


def test_constraints_hold_on_sqlite(sqlite_url: str) -> None:  # noqa: F811
    migrate.upgrade(sqlite_url)
    engine = new_engine(sqlite_url)
    factory = new_session_factory(engine)
    job_id = _job(factory)
    with factory.begin() as s:
        jobs.finish_done(s, job_id, worker="w1", **VERDICT)
    with pytest.raises(IntegrityError, match="UNIQUE"), factory.begin() as s:
        s.add(VerdictRow(job_id=job_id, **VERDICT))
    other = _job(factory)
    with pytest.raises(IntegrityError, match="failed_iff_error_code"), factory.begin() as s:
        s.execute(
            text("UPDATE scan_jobs SET state='failed', finished_at='2030-01-01' WHERE id=:id"),
            {"id": other.hex},
        )
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), factory.begin() as s:
        s.add(VerdictRow(job_id=uuid.uuid4(), **VERDICT))
    engine.dispose()


def test_timestamps_are_timezone_aware_on_postgres(pg_engine: Engine) -> None:
    factory = new_session_factory(pg_engine)
    before = datetime.now(timezone.utc)
    job_id = _job(factory)
    after = datetime.now(timezone.utc)
    with factory.begin() as s:
        job = jobs.get_job(s, job_id)
        assert job is not None and job.created_at.tzinfo is not None
        # Between the two readings of the clock around the insert, however long it took (a wrong zone
        # would be hours off); a second either side for the two clocks' rounding.
        assert before - timedelta(seconds=1) <= job.created_at <= after + timedelta(seconds=1)


def test_concurrent_finish_done_blocks_then_writes_nothing(pg_engine: Engine) -> None:
    """The second redelivery waits on the first one's row lock, then sees 'done' and stores nothing."""
    factory = new_session_factory(pg_engine)
    job_id = _job(factory)
    first = factory()
    assert jobs.finish_done(first, job_id, worker="w1", **VERDICT) is True
    outcome: dict[str, object] = {}

    def second() -> None:
        with factory.begin() as s:
            outcome["made"] = jobs.finish_done(
                s, job_id, worker="w2", **{**VERDICT, "label": "real", "fake_score": 0.1}
            )
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), "the second finish_done should wait for the first transaction's row lock"
    committed_at = time.monotonic()
    first.commit()
    first.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert outcome["made"] is False and outcome["at"] >= committed_at  # type: ignore[operator]
    with factory.begin() as s:
        rows = s.execute(select(VerdictRow.worker, VerdictRow.label).where(VerdictRow.job_id == job_id)).all()
    assert [tuple(r) for r in rows] == [("w1", "fake")]


def test_racing_redeliveries_store_exactly_one_verdict(pg_engine: Engine) -> None:
    factory = new_session_factory(pg_engine)
    job_ids = [_job(factory) for _ in range(20)]
    made: list[tuple[uuid.UUID, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def deliver(job_id: uuid.UUID, worker: str, barrier: threading.Barrier) -> None:
        try:
            barrier.wait(timeout=10)
            with factory.begin() as s:
                if jobs.finish_done(s, job_id, worker=worker, **VERDICT):
                    with lock:
                        made.append((job_id, worker))
        except BaseException as exc:  # surfaced below with the failing assertion
            errors.append(exc)

    for job_id in job_ids:
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=deliver, args=(job_id, w, barrier)) for w in ("w1", "w2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    assert errors == []
    assert sorted(j for j, _ in made) == sorted(job_ids)  # exactly one winner per job
    with factory.begin() as s:
        counts = {
            row[0]: row[1]
            for row in s.execute(select(VerdictRow.job_id, func.count()).group_by(VerdictRow.job_id))
        }
        workers = {row[0]: row[1] for row in s.execute(select(VerdictRow.job_id, VerdictRow.worker))}
    assert counts == dict.fromkeys(job_ids, 1)
    assert workers == dict(made)


def test_racing_submissions_with_one_idempotency_key_create_one(pg_engine: Engine) -> None:
    factory = new_session_factory(pg_engine)
    barrier = threading.Barrier(4)
    outcomes: list[tuple[uuid.UUID, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submit() -> None:
        try:
            barrier.wait(timeout=10)
            with factory.begin() as s:
                submission, _, created = jobs.create_submission(
                    s, ["a.png", "b.png"], idempotency_key="same-key"
                )
            with lock:
                outcomes.append((submission.id, created))
        except BaseException as exc:  # surfaced below with the failing assertion
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert errors == []
    assert sorted(created for _, created in outcomes) == [False, False, False, True]
    assert len({sid for sid, _ in outcomes}) == 1
    with factory.begin() as s:
        assert s.scalar(text("SELECT count(*) FROM scan_jobs")) == 2


def test_claim_and_sweep_on_postgres(pg_engine: Engine) -> None:
    factory = new_session_factory(pg_engine)
    job_id = _job(factory)
    with factory.begin() as s:
        jobs.mark_enqueued(s, [job_id])
        job = jobs.claim_job(s, job_id, worker="w1", lease_seconds=60, max_attempts=2)
        assert job is not None and job.lease_until is not None and job.lease_until.tzinfo is not None
        lease_until = job.lease_until
    with factory.begin() as s:
        assert jobs.sweep_stale(
            s, now=lease_until - timedelta(seconds=1), lease_seconds=60, max_attempts=2
        ) == ([], [])
        assert jobs.sweep_stale(
            s, now=lease_until + timedelta(seconds=1), lease_seconds=60, max_attempts=2
        ) == (
            [job_id],
            [],
        )
    with factory.begin() as s:
        assert jobs.claim_job(s, job_id, worker="w2", lease_seconds=60, max_attempts=2) is not None
    with factory.begin() as s:
        later = datetime.now(timezone.utc) + timedelta(seconds=120)
        assert jobs.sweep_stale(s, now=later, lease_seconds=60, max_attempts=2) == ([], [job_id])
        job = jobs.get_job(s, job_id)
        assert job is not None and (job.state, job.error_code, job.attempts) == ("failed", "MAX_ATTEMPTS", 2)
