"""The job, result, registry and training queries on a migrated SQLite database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, registry, results, training
from db.migrate import upgrade
from db.models import ScanJob, Submission, VerdictRow
from db.session import new_engine, new_session_factory
from db.tenants import create_tenant
from dfscan.exceptions import IdempotencyConflictError, NothingToRollBackError, UnknownIdError
from tests.fixtures.databases import sqlite_url  # noqa: F401

SHA = "ab" * 32
MAX_ATTEMPTS = 3


@pytest.fixture
def factory(sqlite_url: str) -> Iterator[sessionmaker[Session]]:  # noqa: F811
    upgrade(sqlite_url)
    engine = new_engine(sqlite_url)
    yield new_session_factory(engine)
    engine.dispose()


def _verdict(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        label="fake",
        fake_score=0.9,
        threshold=0.5,
        model_version="m1",
        image_sha256=SHA,
        image_format="JPEG",
        n_bytes=1234,
        width=32,
        height=24,
        fetch_ms=1.0,
        decode_ms=2.0,
        infer_ms=3.0,
        cached=False,
        worker="w1",
    )
    values.update(overrides)
    return values


def _submit(factory: sessionmaker[Session], sources: list[str], **kwargs: Any) -> list[uuid.UUID]:
    with factory.begin() as s:
        _, job_rows, _ = jobs.create_submission(s, sources, **kwargs)
        return [job.id for job in job_rows]


def _job(factory: sessionmaker[Session], job_id: uuid.UUID) -> ScanJob:
    with factory.begin() as s:
        job = jobs.get_job(s, job_id)
        assert job is not None
        return job


def _n_verdicts(factory: sessionmaker[Session], job_id: uuid.UUID) -> int:
    with factory.begin() as s:
        return s.scalar(select(func.count()).select_from(VerdictRow).where(VerdictRow.job_id == job_id)) or 0


def test_submission_is_idempotent_per_key(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        sub, first_jobs, created = jobs.create_submission(
            s, ["a.png", "b.png"], client_ref="c1", priority=5, idempotency_key="k1"
        )
        first_ids = [job.id for job in first_jobs]
    assert created is True
    assert [job.seq for job in first_jobs] == [0, 1]
    assert sub.n_jobs == 2 and sub.priority == 5
    with factory.begin() as s:
        again, again_jobs, created_again = jobs.create_submission(s, ["a.png", "b.png"], idempotency_key="k1")
        assert created_again is False
        assert again.id == sub.id
        assert [job.id for job in again_jobs] == first_ids
        assert again.created_at.tzinfo is not None
    with factory.begin() as s, pytest.raises(ValueError, match="different sources"):
        jobs.create_submission(s, ["other.png"], idempotency_key="k1")
    with factory.begin() as s:
        _, _, created_plain = jobs.create_submission(s, ["a.png"])
        _, _, created_plain2 = jobs.create_submission(s, ["a.png"])
        assert created_plain and created_plain2
        assert s.scalar(select(func.count()).select_from(ScanJob)) == 4


def test_an_idempotent_resubmit_must_ask_for_the_same_callback(factory: sessionmaker[Session]) -> None:
    hook = "https://hooks.example.com/a"
    with factory.begin() as s:
        sub, _, _ = jobs.create_submission(s, ["a.png"], idempotency_key="k2", callback_url=hook)
    with factory.begin() as s:  # the same call again: the same submission
        again, _, created = jobs.create_submission(s, ["a.png"], idempotency_key="k2", callback_url=hook)
        assert (again.id, created) == (sub.id, False)
    for other in (
        {"callback_url": "https://hooks.example.com/b"},
        {"callback_url": None},
        {"callback_url": hook, "callback_events": ["job.completed"]},
    ):
        with (
            factory.begin() as s,
            pytest.raises(IdempotencyConflictError, match="another callback") as caught,
        ):
            jobs.create_submission(s, ["a.png"], idempotency_key="k2", **other)  # type: ignore[arg-type]
        assert caught.value.code == "IDEMPOTENCY_CONFLICT"
        assert "hooks.example.com" not in caught.value.message  # never echoes a URL (credentials)
    with factory.begin() as s, pytest.raises(IdempotencyConflictError, match="different sources") as caught:
        jobs.create_submission(s, ["b.png"], idempotency_key="k2", callback_url=hook)
    assert caught.value.code == "IDEMPOTENCY_CONFLICT"
    with factory() as s:
        stored = s.get(Submission, sub.id)
        assert stored is not None and stored.callback_url == hook


def test_result_pages_are_newest_first_filtered_and_never_skip_or_repeat(
    factory: sessionmaker[Session],
) -> None:
    made: list[list[uuid.UUID]] = []
    for n in range(4):
        with factory.begin() as s:
            sub, rows, _ = jobs.create_submission(
                s, [f"s{n}-{i}" for i in range(3)], client_ref=f"ref{n % 2}"
            )
            s.execute(
                text("UPDATE scan_jobs SET created_at = :at WHERE submission_id = :sid"),
                {"at": datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=n), "sid": sub.id.hex},
            )
            jobs.finish_failed(s, rows[1].id, code="CORRUPT_IMAGE", message="bad")
            made.append([row.id for row in rows])
    newest_first = [job_id for ids in reversed(made) for job_id in ids]
    seen: list[uuid.UUID] = []
    cursor = None
    with factory() as s:
        while True:
            page = results.page(s, limit=5, cursor=cursor)
            seen += [row.job_id for row in page.rows]
            if page.next_cursor is None:
                break
            assert page.next_cursor == page.rows[-1].job_id
            cursor = page.next_cursor
        assert seen == newest_first
        assert results.page(s, limit=1).rows[0].job_id == made[-1][0]  # --limit 1: the newest
        refs = results.page(s, client_ref="ref1")
        assert [row.job_id for row in refs.rows] == made[3] + made[1] and refs.next_cursor is None
        failed = results.page(s, error_code="CORRUPT_IMAGE")
        assert [row.job_id for row in failed.rows] == [ids[1] for ids in reversed(made)]
        with pytest.raises(UnknownIdError):
            results.page(s, cursor=uuid.uuid4())


def test_outbox_lists_unsent_jobs_until_marked(factory: sessionmaker[Session]) -> None:
    ids = _submit(factory, ["a", "b", "c"])
    with factory.begin() as s:
        assert [job.id for job in jobs.unsent_jobs(s)] == ids
        assert [job.id for job in jobs.unsent_jobs(s, limit=2)] == ids[:2]
        jobs.mark_enqueued(s, ids[:2])
    with factory.begin() as s:
        assert [job.id for job in jobs.unsent_jobs(s)] == ids[2:]
    assert _job(factory, ids[0]).enqueued_at is not None


def test_claim_runs_the_job_and_refuses_final_or_missing_jobs(factory: sessionmaker[Session]) -> None:
    job_id, other_id = _submit(factory, ["a", "b"])
    before = datetime.now(timezone.utc)
    with factory.begin() as s:
        job = jobs.claim_job(s, job_id, worker="w1", lease_seconds=60, max_attempts=MAX_ATTEMPTS)
        assert job is not None
        assert (job.state, job.attempts, job.worker) == ("running", 1, "w1")
        assert job.lease_until is not None and job.lease_until >= before + timedelta(seconds=59)
        assert jobs.finish_failed(s, other_id, code="CORRUPT_IMAGE", message="truncated") is True
    with factory.begin() as s:
        assert jobs.finish_done(s, job_id, **_verdict()) is True
    with factory.begin() as s:
        assert jobs.claim_job(s, job_id, worker="w2", lease_seconds=60, max_attempts=MAX_ATTEMPTS) is None
        assert jobs.claim_job(s, other_id, worker="w2", lease_seconds=60, max_attempts=MAX_ATTEMPTS) is None
        assert (
            jobs.claim_job(s, uuid.uuid4(), worker="w2", lease_seconds=60, max_attempts=MAX_ATTEMPTS) is None
        )
    done, failed = _job(factory, job_id), _job(factory, other_id)
    assert (done.state, done.attempts, done.worker) == ("done", 1, "w1")
    assert (failed.state, failed.error_code, failed.attempts) == ("failed", "CORRUPT_IMAGE", 0)


def test_claim_beyond_max_attempts_fails_the_job(factory: sessionmaker[Session]) -> None:
    (job_id,) = _submit(factory, ["a"])
    for attempt in range(1, MAX_ATTEMPTS + 1):
        with factory.begin() as s:
            job = jobs.claim_job(s, job_id, worker="w", lease_seconds=60, max_attempts=MAX_ATTEMPTS)
            assert job is not None and job.attempts == attempt
            jobs.release_job(s, job_id)
    with factory.begin() as s:
        assert jobs.claim_job(s, job_id, worker="w", lease_seconds=60, max_attempts=MAX_ATTEMPTS) is None
    job = _job(factory, job_id)
    assert (job.state, job.error_code, job.attempts) == ("failed", "MAX_ATTEMPTS", MAX_ATTEMPTS)
    assert job.finished_at is not None
    assert "3 times" in (job.error_message or "")


def test_finish_done_twice_stores_one_verdict(factory: sessionmaker[Session]) -> None:
    (job_id,) = _submit(factory, ["a"])
    with factory.begin() as s:
        jobs.claim_job(s, job_id, worker="w1", lease_seconds=60, max_attempts=MAX_ATTEMPTS)
        assert jobs.finish_done(s, job_id, **_verdict(fake_score=0.9)) is True
    with factory.begin() as s:
        assert jobs.finish_done(s, job_id, **_verdict(fake_score=0.1, label="real")) is False
        assert jobs.finish_failed(s, job_id, code="FETCH_TIMEOUT", message="late") is False
    assert _n_verdicts(factory, job_id) == 1
    with factory.begin() as s:
        (row,) = results.results(s)
    assert (row.status, row.label, row.fake_score, row.error_code) == ("done", "fake", 0.9, None)


def test_finish_done_after_failure_keeps_the_failure(factory: sessionmaker[Session]) -> None:
    (job_id,) = _submit(factory, ["a"])
    with factory.begin() as s:
        assert (
            jobs.finish_failed(s, job_id, code="BLOCKED_DESTINATION", message="10.0.0.1 is private") is True
        )
    with factory.begin() as s:
        assert jobs.finish_done(s, job_id, **_verdict()) is False
    assert _n_verdicts(factory, job_id) == 0
    job = _job(factory, job_id)
    assert (job.state, job.error_code, job.error_message) == (
        "failed",
        "BLOCKED_DESTINATION",
        "10.0.0.1 is private",
    )


def test_release_puts_a_running_job_back_and_keeps_enqueued_at(factory: sessionmaker[Session]) -> None:
    (job_id,) = _submit(factory, ["a"])
    with factory.begin() as s:
        jobs.mark_enqueued(s, [job_id])
        jobs.claim_job(s, job_id, worker="w1", lease_seconds=60, max_attempts=MAX_ATTEMPTS)
        jobs.release_job(s, job_id)
    job = _job(factory, job_id)
    assert (job.state, job.worker, job.lease_until, job.attempts) == ("queued", None, None, 1)
    assert job.enqueued_at is not None
    with factory.begin() as s:
        assert jobs.unsent_jobs(s) == []


def test_sweep_requeues_stale_jobs_and_fails_exhausted_ones(factory: sessionmaker[Session]) -> None:
    stuck_queued, stuck_running, exhausted, lease_expired, unsent = _submit(
        factory, ["a", "b", "c", "d", "e"]
    )
    with factory.begin() as s:
        jobs.mark_enqueued(s, [stuck_queued, stuck_running, exhausted, lease_expired])
        for job_id in (stuck_running, exhausted, lease_expired):
            jobs.claim_job(s, job_id, worker="w", lease_seconds=60, max_attempts=MAX_ATTEMPTS)
        s.execute(
            text("UPDATE scan_jobs SET attempts = :n WHERE id = :id"),
            {"n": MAX_ATTEMPTS, "id": exhausted.hex},
        )
    now = datetime.now(timezone.utc)
    with factory.begin() as s:
        assert jobs.sweep_stale(
            s, now=now + timedelta(seconds=30), lease_seconds=60, max_attempts=MAX_ATTEMPTS
        ) == (
            [],
            [],
        )
    later = now + timedelta(seconds=61)
    with factory.begin() as s:
        resend, failed = jobs.sweep_stale(s, now=later, lease_seconds=60, max_attempts=MAX_ATTEMPTS)
    assert sorted(resend) == sorted([stuck_queued, stuck_running, lease_expired])
    assert failed == [exhausted]
    for job_id in resend:
        job = _job(factory, job_id)
        assert (job.state, job.worker, job.lease_until, job.enqueued_at) == ("queued", None, None, later)
    gone = _job(factory, exhausted)
    assert (gone.state, gone.error_code, gone.finished_at) == ("failed", "MAX_ATTEMPTS", later)
    assert _job(factory, unsent).enqueued_at is None  # the outbox relay sends it, not the sweeper
    with factory.begin() as s:
        again = jobs.sweep_stale(
            s, now=later + timedelta(seconds=1), lease_seconds=60, max_attempts=MAX_ATTEMPTS
        )
    assert again == ([], [])


def test_cached_score_matches_bytes_and_model_version(factory: sessionmaker[Session]) -> None:
    (job_id,) = _submit(factory, ["a"])
    with factory.begin() as s:
        assert jobs.cached_verdicts(s, [SHA], "m1") == {}
        jobs.finish_done(s, job_id, **_verdict(fake_score=0.25, label="real"))
    with factory.begin() as s:
        assert jobs.cached_verdicts(s, [SHA], "m1")[SHA].fake_score == 0.25
        assert jobs.cached_verdicts(s, [SHA], "m2") == {}
        assert jobs.cached_verdicts(s, ["cd" * 32], "m1") == {}


def test_the_duplicate_cache_never_crosses_tenants(factory: sessionmaker[Session]) -> None:
    """Bytes one tenant scanned are judged afresh for another: a cache hit would tell it they were seen."""
    with factory.begin() as s:
        other = create_tenant(s, "other").id
    (job_id,) = _submit(factory, ["a"], tenant_id=other)
    with factory.begin() as s:
        jobs.finish_done(s, job_id, **_verdict(fake_score=0.25, label="real"))
    with factory.begin() as s:
        assert jobs.cached_verdicts(s, [SHA], "m1", tenant_id=other)[SHA].fake_score == 0.25
        assert jobs.cached_verdicts(s, [SHA], "m1") == {}  # the default tenant's cache


def test_counts_and_result_filters(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        sub, rows, _ = jobs.create_submission(s, ["a", "b", "c", "d"])
        a, b, c, _d = (job.id for job in rows)
        jobs.finish_done(s, a, **_verdict(label="fake"))
        jobs.finish_done(s, b, **_verdict(label="real", fake_score=0.1))
        jobs.finish_failed(s, c, code="FILE_NOT_FOUND", message="no such file")
    with factory.begin() as s:
        assert results.submission_counts(s, sub.id) == {
            "queued": 1,
            "running": 0,
            "done": 2,
            "failed": 1,
            "total": 4,
        }
        assert [r.seq for r in results.results(s, submission_id=sub.id)] == [0, 1, 2, 3]
        assert [r.job_id for r in results.results(s, label="real")] == [b]
        assert [r.seq for r in results.results(s, submission_id=sub.id, limit=2)] == [0, 1]
        failed = results.results(s, submission_id=sub.id)[2]
        assert (failed.status, failed.error_code, failed.error, failed.label) == (
            "failed",
            "FILE_NOT_FOUND",
            "no such file",
            None,
        )
        future = datetime.now(timezone.utc) + timedelta(hours=1)
        assert results.results(s, since=future) == []
        assert len(results.results(s, since=datetime.now(timezone.utc) - timedelta(hours=1))) == 3


def test_check_submission_reports_every_kind_of_violation(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        sub, rows, _ = jobs.create_submission(s, [f"s{i}" for i in range(7)])
        ok_done, ok_failed, still_queued, done_no_verdict, failed_with_verdict, over, missing = (
            j.id for j in rows
        )
        jobs.finish_done(s, ok_done, **_verdict())
        jobs.finish_failed(s, ok_failed, code="TOO_LARGE", message="21 MiB")
        jobs.finish_failed(s, failed_with_verdict, code="FETCH_TIMEOUT", message="slow")
        jobs.finish_done(s, over, **_verdict())
    with factory.begin() as s:
        report = results.check_submission(s, sub.id, max_attempts=MAX_ATTEMPTS)
        assert (report.submitted, report.done, report.failed, report.lost) == (
            7,
            2,
            2,
            [still_queued, done_no_verdict, missing],
        )
        assert report.ok is False
    # Break the rest with raw SQL, bypassing the guarded functions where the schema allows it.
    with factory.begin() as s:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        s.execute(
            text("UPDATE scan_jobs SET state = 'done', finished_at = :now WHERE id = :id"),
            {"now": now, "id": done_no_verdict.hex},
        )
        s.execute(
            text(
                "INSERT INTO verdicts (job_id, label, fake_score, threshold, model_version, image_sha256, cached) "
                "VALUES (:id, 'real', 0.2, 0.5, 'm1', :sha, 0)"
            ),
            {"id": failed_with_verdict.hex, "sha": SHA},
        )
        s.execute(text("UPDATE scan_jobs SET attempts = 9 WHERE id = :id"), {"id": over.hex})
        s.execute(text("DELETE FROM scan_jobs WHERE id = :id"), {"id": missing.hex})
    with factory.begin() as s:
        report = results.check_submission(s, sub.id, max_attempts=MAX_ATTEMPTS)
    assert report.lost == [still_queued, done_no_verdict]
    assert report.missing_seqs == [6]
    assert report.duplicated == [failed_with_verdict]
    assert report.over_attempts == [over]
    assert (report.done, report.failed) == (2, 2)
    assert report.failed_codes == {"TOO_LARGE": 1, "FETCH_TIMEOUT": 1}
    assert "lost=3 duplicated=1 over_attempts=1" in report.summary()
    # A second verdict for one job is not even representable.
    with pytest.raises(IntegrityError), factory.begin() as s:
        s.add(VerdictRow(job_id=ok_done, **_verdict()))
        s.flush()
    with factory.begin() as s, pytest.raises(LookupError):
        results.check_submission(s, uuid.uuid4(), max_attempts=MAX_ATTEMPTS)


def test_clean_submission_checks_ok(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        sub, rows, _ = jobs.create_submission(s, ["a", "b"])
        jobs.finish_done(s, rows[0].id, **_verdict())
        jobs.finish_failed(s, rows[1].id, code="CORRUPT_IMAGE", message="bad")
    with factory.begin() as s:
        report = results.check_submission(s, sub.id, max_attempts=MAX_ATTEMPTS)
    assert report.ok and (report.done, report.failed) == (1, 1)


def test_registry_promotes_and_rolls_back_through_history(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        assert registry.current_version(s) is None
        for name in ("A", "B", "C"):
            registry.register_version(s, name, source=f"/store/{name}", threshold=0.4, metrics={"auc": 0.9})
        with pytest.raises(ValueError, match="already registered"):
            registry.register_version(s, "A", source="x")
        with pytest.raises(LookupError, match="not registered"):
            registry.promote(s, "Z")
        with pytest.raises(LookupError, match="nothing to roll back"):
            registry.rollback(s)
        registry.promote(s, "A")
        registry.promote(s, "B")
        third = registry.promote(s, "C")
        assert (third.version, third.previous_version, third.reason) == ("C", "B", "promote")
    with factory.begin() as s:
        back = registry.rollback(s)
        assert (back.version, back.previous_version, back.reason) == ("B", "C", "rollback")
        assert registry.rollback(s).version == "A"
        current = registry.current_version(s)
        assert current is not None and current.version == "A" and current.metrics == {"auc": 0.9}
        # Past the first promotion lies the default model (DFSCAN_MODEL): a row without a version.
        to_default = registry.rollback(s)
        assert (to_default.version, to_default.previous_version) == (None, "A")
        assert registry.current_version(s) is None
        with pytest.raises(NothingToRollBackError, match="nothing to roll back"):
            registry.rollback(s)
        registry.promote(s, "C")
        assert registry.rollback(s).version is None  # one promotion: back to the default
        assert sorted(v.version for v in registry.list_versions(s)) == ["A", "B", "C"]
        assert [p.reason for p in registry.promotion_history(s)].count("rollback") == 4


def test_promote_default_serves_dfscan_model_and_rollback_walks_back(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        registry.register_version(s, "A", source="/store/A", threshold=0.7)
        assert registry.promote_default(s) is None  # the default already serves: nothing written
        registry.promote(s, "A")
        row = registry.promote_default(s)
        assert row is not None and (row.version, row.previous_version, row.reason) == (None, "A", "default")
        assert registry.current_version(s) is None
        back = registry.rollback(s)  # undo the --default: A serves again
        assert back.version == "A" and registry.current_version(s) is not None
        assert registry.rollback(s).version is None
        with pytest.raises(UnknownIdError, match="not registered"):
            registry.promote(s, "Z")


def test_training_run_lifecycle(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        run = training.create_run(s, data_path="/data", base_model="vit-tiny", params={"epochs": 2})
        queued_then_cancelled = training.create_run(s, data_path="/data", base_model="vit-tiny")
    with factory.begin() as s:
        claimed = training.claim_run(s, run.id, worker="t1")
        assert claimed is not None and (claimed.state, claimed.attempts, claimed.worker) == (
            "running",
            1,
            "t1",
        )
        assert training.claim_run(s, run.id, worker="t2") is None
        assert training.update_progress(s, run.id, {"epoch": 1, "step": 10, "loss": 0.5}) is True
        assert training.is_cancel_requested(s, run.id) is False
        assert training.request_cancel(s, run.id) is True
        assert training.is_cancel_requested(s, run.id) is True
        assert training.request_cancel(s, queued_then_cancelled.id) is True
        assert training.claim_run(s, queued_then_cancelled.id, worker="t1") is None
        with pytest.raises(ValueError, match="error_code"):
            training.finish_run(s, run.id, state="failed")
        assert training.finish_run(s, run.id, state="cancelled", error_message="operator") is True
        assert training.finish_run(s, run.id, state="done") is False
        assert training.update_progress(s, run.id, {"epoch": 2}) is False
    with factory.begin() as s:
        got = training.get_run(s, run.id)
        assert got is not None
        assert (got.state, got.progress, got.params) == (
            "cancelled",
            {"epoch": 1, "step": 10, "loss": 0.5},
            {"epochs": 2},
        )
        assert got.finished_at is not None and got.finished_at.tzinfo is not None
        other = training.get_run(s, queued_then_cancelled.id)
        assert other is not None and other.state == "cancelled"
        assert {r.id for r in training.list_runs(s, state="cancelled")} == {run.id, queued_then_cancelled.id}
        assert training.list_runs(s, state="running") == []


def test_training_run_failure_records_its_code(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        run = training.create_run(s, data_path="/d", base_model="b")
        training.claim_run(s, run.id, worker="t1")
        assert training.finish_run(
            s, run.id, state="failed", error_code="BAD_TRAINING_DATA", error_message="no fake images"
        )
    with factory.begin() as s:
        got = training.get_run(s, run.id)
        assert got is not None and (got.state, got.error_code) == ("failed", "BAD_TRAINING_DATA")


def test_naive_datetimes_are_refused(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s, pytest.raises(Exception, match="naive datetime"):
        jobs.sweep_stale(s, now=datetime(2030, 1, 1), lease_seconds=60, max_attempts=MAX_ATTEMPTS)


def test_a_live_lease_is_renewed_and_keeps_its_claim_against_a_redelivery(
    factory: sessionmaker[Session],
) -> None:
    held, other = _submit(factory, ["a", "b"])
    with factory.begin() as s:
        assert set(
            jobs.claim_jobs(s, [held, other], worker="w1", lease_seconds=60, max_attempts=MAX_ATTEMPTS)
        ) == {
            held,
            other,
        }
    first = _job(factory, held).lease_until
    assert first is not None
    with factory.begin() as s:
        # w2 renews nothing it does not hold; w1 renews only its running jobs.
        assert jobs.renew_leases(s, [held], worker="w2", lease_seconds=600) == []
        jobs.finish_failed(s, other, code="FILE_NOT_FOUND", message="gone")
        assert jobs.renew_leases(s, [held, other], worker="w1", lease_seconds=600) == [held]
    renewed = _job(factory, held).lease_until
    assert renewed is not None and renewed > first + timedelta(seconds=500)
    # A redelivered message while the lease is live: not claimed, not failed, attempts unchanged.
    with factory.begin() as s:
        assert jobs.claim_jobs(s, [held], worker="w2", lease_seconds=60, max_attempts=MAX_ATTEMPTS) == {}
    job = _job(factory, held)
    assert (job.state, job.worker, job.attempts, job.error_code) == ("running", "w1", 1, None)
    # Even on its last attempt, a live claim is not failed with MAX_ATTEMPTS by a redelivery.
    with factory.begin() as s:
        s.execute(
            text("UPDATE scan_jobs SET attempts = :n WHERE id = :id"), {"n": MAX_ATTEMPTS, "id": held.hex}
        )
        assert jobs.claim_jobs(s, [held], worker="w2", lease_seconds=60, max_attempts=MAX_ATTEMPTS) == {}
    assert _job(factory, held).state == "running"
    # Once the lease has run out (the worker is gone), a redelivery takes it over.
    with factory.begin() as s:
        s.execute(text("UPDATE scan_jobs SET attempts = 1, lease_until = :t WHERE id = :id"),
                  {"t": datetime(2000, 1, 1, tzinfo=timezone.utc), "id": held.hex})  # fmt: skip
        claimed = jobs.claim_jobs(s, [held], worker="w2", lease_seconds=60, max_attempts=MAX_ATTEMPTS)
    assert claimed[held].attempts == 2 and _job(factory, held).worker == "w2"


def test_sweep_resends_only_the_queued_jobs_it_is_given(factory: sessionmaker[Session]) -> None:
    lost, held = _submit(factory, ["a", "b"])
    with factory.begin() as s:
        jobs.mark_enqueued(s, [lost, held])
    later = datetime.now(timezone.utc) + timedelta(seconds=61)
    with factory.begin() as s:
        assert jobs.sweep_stale(
            s, now=later, lease_seconds=60, max_attempts=MAX_ATTEMPTS, include_queued=[]
        ) == ([], [])
        resend, failed = jobs.sweep_stale(
            s, now=later, lease_seconds=60, max_attempts=MAX_ATTEMPTS, include_queued=[lost]
        )
    assert (resend, failed) == ([lost], [])


def test_the_lease_keeper_renews_held_jobs_until_the_task_lets_go(factory: sessionmaker[Session]) -> None:
    import time

    from worker.leases import LeaseKeeper

    held, idle = _submit(factory, ["a", "b"])
    with factory.begin() as s:
        jobs.claim_jobs(s, [held, idle], worker="w1", lease_seconds=1, max_attempts=MAX_ATTEMPTS)
    keeper = LeaseKeeper(factory, "w1", lease_seconds=1)
    try:
        with keeper.holding([held]):
            time.sleep(2.5)  # 2.5 leases: without renewal both would have expired
            now = datetime.now(timezone.utc)
            lease = _job(factory, held).lease_until
            assert lease is not None and lease > now, (lease, now)
            # A redelivery cannot take the held job, but can take the idle one.
            with factory.begin() as s:
                taken = jobs.claim_jobs(
                    s, [held, idle], worker="w2", lease_seconds=1, max_attempts=MAX_ATTEMPTS
                )
            assert set(taken) == {idle}
        assert keeper.held() == [] and keeper.renewals >= 5
        renewals = keeper.renewals
        time.sleep(1.0)
        assert keeper.renewals == renewals  # nothing held: no statement runs
    finally:
        keeper.close()


def test_finish_failed_many_fails_the_active_jobs_in_one_statement_and_skips_final_ones(
    factory: sessionmaker[Session],
) -> None:
    queued, running, done = _submit(factory, ["a", "b", "c"])
    with factory.begin() as s:
        jobs.claim_job(s, running, worker="w1", lease_seconds=60, max_attempts=MAX_ATTEMPTS)
        jobs.claim_job(s, done, worker="w1", lease_seconds=60, max_attempts=MAX_ATTEMPTS)
    with factory.begin() as s:
        assert jobs.finish_done(s, done, **_verdict()) is True
    missing = uuid.uuid4()
    with factory.begin() as s:
        made = jobs.finish_failed_many(
            s, [running, queued, done, running, missing], code="BAD_MESSAGE", message="bad"
        )
    assert made == {queued, running}
    with factory() as s:
        rows = {row.id: row for row in s.scalars(select(ScanJob))}
    assert (rows[queued].state, rows[queued].error_code) == ("failed", "BAD_MESSAGE")
    assert (rows[running].state, rows[running].lease_until) == ("failed", None)
    assert (rows[done].state, rows[done].error_code) == ("done", None)
    with factory.begin() as s:  # already final: a second call makes nothing
        assert jobs.finish_failed_many(s, [queued, running], code="BAD_MESSAGE", message="again") == set()
        assert jobs.finish_failed_many(s, [], code="BAD_MESSAGE", message="none") == set()
