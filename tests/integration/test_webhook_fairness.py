"""Webhook delivery that one bad receiver cannot stall, and claims that cannot be taken in flight.

Real Postgres, real receivers on 127.0.0.1, real delivery loops. Waits are on conditions with
generous ceilings; the timing bounds (healthy p99, scrape time) are ``make faults`` rows
(``tests/integration/faults/webhook_scenarios.py``), never asserted here.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db import webhooks
from db.migrate import upgrade
from db.models import WebhookDelivery, utcnow
from db.session import new_engine, new_session_factory
from dfscan.exceptions import ConfigError
from dfscan.settings import Settings
from tests.fixtures.databases import pg_url  # noqa: F401
from tests.fixtures.webhook_receiver import Receiver
from tests.integration.faults.webhook_scenarios import (
    hung_beside_healthy,
    loops_with_slow_receivers,
    settings_for,
    write_events,
)
from worker.breakers import RedisBreakers
from worker.delivery import BREAKER_FAILURES, PER_RECEIVER, Deliverer, check_secret
from worker.sweeper import prune_webhooks


@pytest.fixture
def migrated(pg_url: str) -> str:  # noqa: F811
    upgrade(pg_url)
    return pg_url


@pytest.fixture
def sessions(migrated: str) -> Iterator[sessionmaker[Session]]:
    engine = new_engine(migrated)
    yield new_session_factory(engine)
    engine.dispose()


def test_three_loops_never_post_one_event_at_once_and_count_each_attempt_once(migrated: str) -> None:
    outcome = loops_with_slow_receivers(migrated, n_loops=3, n=24, delay=1.0, timeout=2.0)
    notes = outcome.notes
    assert notes["duplicate_posts"] == 0 and notes["overlapping_posts"] == 0, notes
    assert notes["attempts_not_once"] == 0, notes
    assert outcome.report.ok and outcome.report.done == 48, outcome.report.summary()
    assert isinstance(notes["hung_posts"], int) and notes["hung_posts"] > 0  # the hung one was tried


def test_a_hung_receiver_only_delays_its_own_events(migrated: str) -> None:
    outcome = hung_beside_healthy(migrated, n=60, timeout=4.0, batch=10, baseline=False)
    notes = outcome.notes
    assert outcome.report.ok and outcome.report.done == 60, (outcome.report.summary(), notes)
    # Every healthy event arrived while the hung receiver's were still pending, and the hung one
    # held no more than its own slots (plus a few breaker probes), not a round of 64.
    assert notes["hung_pending"] == 60, notes
    assert isinstance(notes["hung_posts"], int) and notes["hung_posts"] <= PER_RECEIVER + 3, notes


def _attempts(sessions: sessionmaker[Session], url: str) -> int:
    with sessions() as s:
        return int(
            s.scalar(select(func.sum(WebhookDelivery.attempts)).where(WebhookDelivery.url == url)) or 0
        )


def _end_open_period(deliverer: Deliverer, receiver: str) -> None:
    """The open period is over (as if BREAKER_OPEN seconds had passed), in the shared state."""
    assert isinstance(deliverer.breakers, RedisBreakers)
    assert deliverer.breakers.client.hset(deliverer.breakers.key(receiver), "open_until", 0) == 0


def test_the_breaker_is_shared_by_two_loops_and_a_probe_closes_it(
    migrated: str, sessions: sessionmaker[Session]
) -> None:
    down = Receiver()  # never started: every connection is refused
    write_events(sessions, down.url, 20)
    receiver = webhooks_receiver(down.url)
    first = Deliverer(sessions, settings_for(migrated, 2.0))
    second = Deliverer(sessions, settings_for(migrated, 2.0))
    try:
        report = first.deliver_once()
        spent = _attempts(sessions, down.url)
        # The first claim takes PER_RECEIVER; until BREAKER_FAILURES have failed a few more may go.
        assert PER_RECEIVER <= spent <= PER_RECEIVER + BREAKER_FAILURES - 1, spent
        assert report.retrying == spent and report.delivered == 0
        assert first.breakers.room([receiver], PER_RECEIVER, {}) == ({receiver: 0}, set())

        # Open for every loop: the second loop never tried this receiver and still costs it nothing.
        assert second.deliver_once().attempted == 0
        assert first.deliver_once().attempted == 0
        assert _attempts(sessions, down.url) == spent

        # The open period is over: one probe across both loops (the second holds it; the first gets
        # nothing meanwhile), which fails and reopens the breaker for twice as long.
        _end_open_period(first, receiver)
        assert second.step() == 1
        assert first.step() == 0
        assert second.deliver_once().attempted == 1
        assert first.deliver_once().attempted == 0
        client = second.breakers.client  # type: ignore[attr-defined]
        key = second.breakers.key(receiver)  # type: ignore[attr-defined]
        assert int(client.hget(key, "opened")) == 2
        assert int(client.pttl(key)) > 0  # forgotten on its own once idle

        # Back up: the probe (the first loop's this time) succeeds and closes it for both loops.
        down.start()
        _end_open_period(first, receiver)
        probed = first.deliver_once()
        assert client.exists(key) == 0
        assert second.breakers.room([receiver], PER_RECEIVER, {}) == ({receiver: PER_RECEIVER}, set())
        rest = second.deliver_once()
        with sessions() as s:
            delivered = s.scalar(
                select(func.count()).where(
                    WebhookDelivery.url == down.url, WebhookDelivery.state == "delivered"
                )
            )
        assert delivered == 20 - spent - 1 == probed.delivered + rest.delivered
    finally:
        first.close()
        second.close()
        down.stop()


def webhooks_receiver(url: str) -> str:
    from dfscan.webhooks import receiver_of

    return receiver_of(url)


def test_a_claim_cannot_be_taken_while_held_and_a_lost_claim_cannot_settle(
    sessions: sessionmaker[Session],
) -> None:
    write_events(sessions, "https://rx.example/h", 1)
    receiver = "https://rx.example:443"
    t0 = utcnow()
    with sessions.begin() as s:
        (first,) = webhooks.claim_due(s, limit=5, lease_seconds=10, receiver=receiver, now=t0)
    with sessions.begin() as s:  # held: another loop gets nothing, even after renewals past the lease
        assert (
            webhooks.claim_due(s, limit=5, lease_seconds=10, receiver=receiver, now=t0 + timedelta(seconds=5))
            == []
        )
        assert webhooks.renew(s, [first], lease_seconds=10, now=t0 + timedelta(seconds=8)) == {first.id}
        assert (
            webhooks.claim_due(
                s, limit=5, lease_seconds=10, receiver=receiver, now=t0 + timedelta(seconds=15)
            )
            == []
        )
    with sessions.begin() as s:  # the holder stopped renewing: after the lease another claim takes it
        (second,) = webhooks.claim_due(
            s, limit=5, lease_seconds=10, receiver=receiver, now=t0 + timedelta(seconds=19)
        )
    assert second.id == first.id and second.token != first.token and second.attempts == 2
    with sessions.begin() as s:  # the old holder learns it lost the row and cannot record its outcome
        assert webhooks.renew(s, [first], lease_seconds=10) == set()
        assert webhooks.settle(s, [webhooks.Outcome(first.id, 200, token=first.token)]) == 0
        assert webhooks.settle(s, [webhooks.Outcome(second.id, 200, token=second.token)]) == 1
    with sessions() as s:
        row = s.get_one(WebhookDelivery, first.id)
        assert (row.state, row.attempts, row.claim_token) == ("delivered", 2, None)


def test_a_released_claim_is_due_again_without_an_attempt(sessions: sessionmaker[Session]) -> None:
    write_events(sessions, "https://rx.example/h", 1)
    with sessions.begin() as s:
        (due,) = webhooks.claim_due(s, limit=1, lease_seconds=60, receiver="https://rx.example:443")
        webhooks.release(s, [due])
    with sessions.begin() as s:
        (again,) = webhooks.claim_due(s, limit=1, lease_seconds=60, receiver="https://rx.example:443")
    assert again.id == due.id and again.attempts == 1


def test_redeliver_of_an_event_in_flight_keeps_its_claim(sessions: sessionmaker[Session]) -> None:
    write_events(sessions, "https://rx.example/h", 1)
    receiver = "https://rx.example:443"
    with sessions.begin() as s:
        (held,) = webhooks.claim_due(s, limit=1, lease_seconds=60, receiver=receiver)
    with sessions.begin() as s:
        assert webhooks.redeliver(s, held.id)
    with sessions.begin() as s:
        assert webhooks.claim_due(s, limit=1, lease_seconds=60, receiver=receiver) == []  # no second POST
        assert webhooks.settle(s, [webhooks.Outcome(held.id, 204, token=held.token)]) == 1
    with sessions.begin() as s:  # settled: a redeliver now sends it again at once
        assert webhooks.redeliver(s, held.id)
        (again,) = webhooks.claim_due(s, limit=1, lease_seconds=60, receiver=receiver)
    assert again.id == held.id and again.attempts == 1


def test_the_sweeper_prunes_settled_events_past_the_retention(
    migrated: str, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_events(sessions, "https://rx.example/h", 9)
    with sessions.begin() as s:
        ids = list(s.scalars(select(WebhookDelivery.id).order_by(WebhookDelivery.id)))
        old = utcnow() - timedelta(days=40)
        states = ["delivered"] * 3 + ["failed"] * 2 + ["pending"] * 2 + ["delivered"] * 2
        for i, (delivery_id, state) in enumerate(zip(ids, states, strict=True)):
            s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(
                    state=state,
                    delivered_at=old if state == "delivered" else None,
                    updated_at=old if i < 7 else utcnow(),  # the last two: delivered recently
                )
            )
    monkeypatch.setattr("worker.sweeper.PRUNE_BATCH", 2)  # several batches in one sweep
    settings = settings_for(migrated, 2.0).model_copy(update={"webhook_retention_days": 30.0})
    assert prune_webhooks(sessions, settings) == 5
    with sessions() as s:
        left = {row.id: row.state for row in s.scalars(select(WebhookDelivery))}
    assert left == {ids[5]: "pending", ids[6]: "pending", ids[7]: "delivered", ids[8]: "delivered"}
    keep = settings.model_copy(update={"webhook_retention_days": 0.0})
    with sessions.begin() as s:
        s.execute(update(WebhookDelivery).values(updated_at=utcnow() - timedelta(days=400)))
    assert prune_webhooks(sessions, keep) == 0  # 0: keep forever


@pytest.mark.parametrize("secret", [" ", "\t\n", " padded", "padded\n"])
def test_a_blank_or_padded_secret_is_refused_at_start(
    migrated: str, sessions: sessionmaker[Session], secret: str
) -> None:
    settings = Settings(_env_file=None, database_url=migrated, webhook_secret=secret)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="DFSCAN_WEBHOOK_SECRET") as info:
        Deliverer(sessions, settings)
    assert info.value.code == "CONFIG_ERROR"
    unset = Settings(_env_file=None, database_url=migrated)  # type: ignore[call-arg]
    assert check_secret(unset) == ""  # unset: deliveries wait, as before


def test_event_rows_name_their_receiver(sessions: sessionmaker[Session]) -> None:
    write_events(sessions, "https://User:pw@RX.example/hooks?x=1", 1)
    with sessions() as s:
        assert s.scalar(select(WebhookDelivery.receiver)) == "https://rx.example:443"


def test_claims_skip_other_receivers(sessions: sessionmaker[Session]) -> None:
    write_events(sessions, "https://a.example/h", 3)
    write_events(sessions, "https://b.example/h", 3)
    with sessions.begin() as s:
        assert webhooks.due_receivers(s) == ["https://a.example:443", "https://b.example:443"]
        got = webhooks.claim_due(s, limit=10, lease_seconds=60, receiver="https://b.example:443")
    assert len(got) == 3 and {due.url for due in got} == {"https://b.example/h"}
    assert all(isinstance(due.token, uuid.UUID) for due in got)


def test_concurrent_finishers_write_one_submission_event_without_locking_until_the_end(
    sessions: sessionmaker[Session],
) -> None:
    """8 threads finish 3 submissions' jobs two per transaction (the worker's write), all at once: each submission
    gets exactly one submission.completed, with its final counts (the lock-free fast path may skip only
    when an unfinished job nobody holds remains)."""
    import threading

    from sqlalchemy import update as sql_update

    from db import jobs
    from db.models import ScanJob
    from dfscan.verdicts import STORED

    subs: list[list[uuid.UUID]] = []
    for _ in range(3):
        with sessions.begin() as s:
            _, rows, _ = jobs.create_submission(
                s, [f"/img/{i}.jpg" for i in range(60)], callback_url="https://rx.example/h"
            )
            subs.append([row.id for row in rows])
    with sessions.begin() as s:
        s.execute(sql_update(ScanJob).values(state="running", attempts=1))
    work = [ids[i : i + 2] for ids in subs for i in range(0, 60, 2)]
    work += [[job_id] for ids in subs for job_id in ids[1::7]]  # some again: already final, no-ops
    random.Random(7).shuffle(work)
    verdict: dict[str, object] = dict.fromkeys(STORED)
    verdict.update(label="real", fake_score=0.1, threshold=0.5, model_version="t", image_sha256="0" * 64)
    verdict.update(cached=False, worker="t")
    lock = threading.Lock()
    start = threading.Barrier(8)

    def finish() -> None:
        start.wait()
        while True:
            with lock:
                if not work:
                    return
                chunk = work.pop()
            with sessions.begin() as s:  # the worker's write: one UPDATE for the chunk, then the events
                jobs.finish_done_many(s, [{"job_id": job_id, **verdict} for job_id in chunk])

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    with sessions() as s:
        assert s.scalar(select(func.count()).where(ScanJob.state != "done")) == 0
        ends = list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.event == "submission.completed")))
    with sessions() as s:
        expected = {s.get_one(ScanJob, ids[0]).submission_id for ids in subs}
    assert len(ends) == 3 and {end.submission_id for end in ends} == expected
    for end in ends:
        assert '"done":60' in end.body and '"total":60' in end.body, end.body


def test_folded_settings_still_work_for_one_release_with_a_warning(
    migrated: str,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from worker.delivery import MIN_ROUND_INTERVAL, POLL_INTERVAL, RETRY_BASE

    plain = Deliverer(sessions, settings_for(migrated, 2.0))
    try:
        assert (plain.poll_interval, plain.min_round_interval, plain.retry_base) == (
            POLL_INTERVAL,
            MIN_ROUND_INTERVAL,
            RETRY_BASE,
        )
    finally:
        plain.close()
    monkeypatch.setenv("DFSCAN_WEBHOOK_POLL_INTERVAL", "1.5")
    monkeypatch.setenv("DFSCAN_WEBHOOK_RETRY_BASE", "2")
    with caplog.at_level("WARNING", logger="dfscan.settings"):
        old = Deliverer(sessions, Settings(_env_file=None, database_url=migrated, webhook_secret="s"))  # type: ignore[call-arg]
    try:
        assert (old.poll_interval, old.retry_base, old.min_round_interval) == (1.5, 2.0, MIN_ROUND_INTERVAL)
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert "DFSCAN_WEBHOOK_POLL_INTERVAL is retired" in warned
        assert "DFSCAN_WEBHOOK_RETRY_BASE is retired" in warned
        assert "MIN_ROUND_INTERVAL" not in warned
    finally:
        old.close()


def test_outcomes_of_a_step_that_failed_are_recorded_by_the_next(
    migrated: str, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    rx = Receiver()
    rx.start()
    write_events(sessions, rx.url, 3)
    deliverer = Deliverer(sessions, settings_for(migrated, 2.0))
    try:
        assert deliverer.step() == 3
        rx.wait_for(3, 60)
        deadline = time.monotonic() + 60
        while len(deliverer._finished) < 3:  # the POST threads hand their results back
            assert time.monotonic() < deadline
            time.sleep(0.02)

        def outage(*args: object, **kwargs: object) -> int:
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))

        monkeypatch.setattr(webhooks, "settle", outage)
        with pytest.raises(OperationalError):
            deliverer.step()
        monkeypatch.undo()
        deliverer.step()
        with sessions() as s:
            rows = list(s.scalars(select(WebhookDelivery)))
        assert {(row.state, row.attempts) for row in rows} == {("delivered", 1)}
        assert deliverer.report.delivered == 3 and len(rx.event_ids_posted()) == 3
    finally:
        deliverer.close()
        rx.stop()


def test_receivers_that_cannot_be_served_do_not_crowd_out_the_rest(sessions: sessionmaker[Session]) -> None:
    for host in ("a", "b", "c"):
        write_events(sessions, f"https://{host}.example/h", 2)
    with sessions() as s:
        everyone = webhooks.due_receivers(s)
        assert webhooks.due_receivers(s, limit=1) == ["https://a.example:443"]
        rest = webhooks.due_receivers(s, limit=1, skip=["https://a.example:443", "https://b.example:443"])
    assert everyone == ["https://a.example:443", "https://b.example:443", "https://c.example:443"]
    assert rest == ["https://c.example:443"]


@pytest.mark.parametrize("command", [["sweeper"], ["webhooks", "deliver", "--once"]])
def test_processes_that_deliver_refuse_to_start_with_a_blank_secret(
    tmp_path: Path, command: list[str]
) -> None:
    env = {
        **os.environ,
        "DFSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'dfscan.db'}",
        "DFSCAN_BROKER_URL": "redis://127.0.0.1:6379/12",
        "DFSCAN_WEBHOOK_SECRET": " \t ",
    }
    run = subprocess.run(
        [sys.executable, "-m", "dfscan.cli.main", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "DFSCAN_WEBHOOK_SECRET is blank or only whitespace" in run.stderr


def test_events_written_by_the_previous_release_are_still_claimed(sessions: sessionmaker[Session]) -> None:
    """A worker of the previous release (a rolling update) inserts events without ``receiver``."""
    from sqlalchemy import text

    write_events(sessions, "https://rx.example/h", 1)
    with sessions.begin() as s:
        sub_id = s.scalar(select(WebhookDelivery.submission_id))
        s.execute(
            text(
                "INSERT INTO webhook_deliveries (id, submission_id, event, dedupe_key, url, body) "
                "VALUES (:id, :sub, 'submission.completed', 'old-writer', 'https://old.example/h', '{}')"
            ),
            {"id": uuid.uuid4(), "sub": sub_id},
        )
    with sessions.begin() as s:
        assert "" in webhooks.due_receivers(s)
        (old,) = webhooks.claim_due(s, limit=5, lease_seconds=30, receiver="")
    assert old.url == "https://old.example/h"
