"""The delivery loop on a real Postgres with a real receiver on 127.0.0.1 (in process, no Celery):
woken by NOTIFY instead of its poll, a round settled in a bounded number of statements, loops that
share the work deliver each event once, and a lost LISTEN connection falls back to polling, then
listens again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from db.migrate import upgrade
from db.models import WebhookDelivery
from db.notifications import APPLICATION_NAME
from db.session import new_engine, new_session_factory
from dfscan.settings import Settings
from tests.fixtures.webhook_receiver import Receiver
from worker.delivery import PER_RECEIVER, Deliverer


@pytest.fixture
def factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(pg_url)
    engine = new_engine(pg_url)
    yield new_session_factory(engine)
    engine.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    rx.start()
    yield rx
    rx.stop()


def settings_for(factory: sessionmaker[Session], **extra: object) -> Settings:
    values: dict[str, object] = {"webhook_secret": "whsec-loop", "webhook_allowlist": "127.0.0.1"}
    values.update(webhook_timeout=5, **extra)
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=str(factory.kw["bind"].url.render_as_string(hide_password=False)),
        **values,
    )


def new_deliverer(factory: sessionmaker[Session], poll: float, **extra: object) -> Deliverer:
    deliverer = Deliverer(factory, settings_for(factory, **extra))
    deliverer.poll_interval = poll
    return deliverer


def finish(factory: sessionmaker[Session], url: str, n: int) -> float:
    """A submission of ``n`` jobs made failed in one transaction (n job.completed events); the
    time.time() of its commit."""
    with factory.begin() as s:
        _, rows, _ = jobs.create_submission(
            s, [f"/img/{i}.jpg" for i in range(n)], callback_url=url, callback_events=["job.completed"]
        )
    with factory.begin() as s:
        for job in rows:
            assert jobs.finish_failed(s, job.id, code="CORRUPT_IMAGE", message="broken")
    return time.time()


class Loop:
    def __init__(self, factory: sessionmaker[Session], poll: float, **extra: object) -> None:
        self.deliverer = new_deliverer(factory, poll, **extra)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.deliverer.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Loop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(CEILING)
        self.deliverer.close()
        assert not self.thread.is_alive()


# A ceiling for conditions, not a time window: a busy machine makes the wait longer, never a failure.
CEILING = 120.0
# A poll this far away never comes during a test: what is delivered was woken by a NOTIFY.
NO_POLL = 3600.0


def wait_until(predicate: object, what: str, timeout: float = CEILING) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_new_event_is_delivered_at_the_commit_not_at_the_next_poll(
    factory: sessionmaker[Session], receiver: Receiver
) -> None:
    # The poll is an hour away, so each delivery below was started by its commit's NOTIFY. How soon
    # (milliseconds) is measured by `make bench-observability`, not asserted here.
    with Loop(factory, poll=NO_POLL) as loop:
        wait_until(lambda: loop.deliverer.wakeups.listening, "the loop never listened")
        time.sleep(0.5)  # let the loop finish the round that follows its LISTEN and wait
        for n in range(1, 4):
            finish(factory, receiver.url, 1)
            wait_until(
                lambda n=n: len(receiver.events()) == n, f"event {n} not delivered: the NOTIFY was lost"
            )
        assert loop.deliverer.wakeups.connects == 1 and loop.thread.is_alive()


def test_a_step_records_its_outcomes_in_a_bounded_number_of_statements(
    factory: sessionmaker[Session], receiver: Receiver
) -> None:
    finish(factory, receiver.url, 64)
    deliverer = new_deliverer(factory, 5.0)
    statements: list[str] = []
    engine = factory.kw["bind"]
    listen = lambda *args: statements.append(args[2])  # noqa: E731
    steps = 0
    real_step = deliverer.step

    def counted_step(**kwargs: bool) -> int:
        nonlocal steps
        steps += 1
        return real_step(**kwargs)

    deliverer.step = counted_step  # type: ignore[method-assign]
    event.listen(engine, "before_cursor_execute", listen)
    try:
        report = deliverer.deliver_once()
    finally:
        event.remove(engine, "before_cursor_execute", listen)
        deliverer.close()
    assert report.delivered == 64 and len(receiver.event_ids()) == 64
    # One receiver: at most PER_RECEIVER POSTs at once, so 64 events take >= 8 steps; each step is
    # one transaction of a few statements (receivers, claim, settle; never one per row).
    assert steps >= 64 // PER_RECEIVER, steps
    assert len(statements) <= 4 * steps, (steps, statements)
    with factory() as s:
        states = Counter(s.scalars(select(WebhookDelivery.state)))
        assert set(s.scalars(select(WebhookDelivery.attempts))) == {1}
        assert set(s.scalars(select(WebhookDelivery.claim_token))) == {None}
    assert states == {"delivered": 64}


def test_loops_that_share_the_work_deliver_each_event_once(
    factory: sessionmaker[Session], receiver: Receiver
) -> None:
    with Loop(factory, poll=5.0) as one, Loop(factory, poll=5.0) as two:
        wait_until(lambda: one.deliverer.wakeups.listening and two.deliverer.wakeups.listening, "listen")
        for _ in range(10):
            finish(factory, receiver.url, 20)
        wait_until(lambda: len(receiver.events()) >= 200, f"{len(receiver.events())} of 200")
        time.sleep(0.5)
    ids = [got.headers["X-Dfscan-Event-Id"] for got in receiver.events()]
    assert len(ids) == 200 and len(set(ids)) == 200  # none twice (claims: FOR UPDATE SKIP LOCKED)
    with factory() as s:
        assert Counter(s.scalars(select(WebhookDelivery.state))) == {"delivered": 200}
        assert set(s.scalars(select(WebhookDelivery.attempts))) == {1}


def _kill_listeners(factory: sessionmaker[Session]) -> int:
    with factory.begin() as s:
        killed = s.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": APPLICATION_NAME},
        ).all()
    return len(killed)


def test_a_lost_listen_connection_falls_back_to_polling_then_listens_again(
    factory: sessionmaker[Session], receiver: Receiver
) -> None:
    with Loop(factory, poll=0.3) as loop:
        wakeups = loop.deliverer.wakeups
        wakeups.retry_every = 3600.0  # stay on polling until the test says otherwise
        wait_until(lambda: wakeups.listening, "the loop never listened")
        assert _kill_listeners(factory) == 1
        wait_until(lambda: not wakeups.listening, "the loop did not notice the lost connection")
        finish(factory, receiver.url, 5)  # its NOTIFY reaches nobody: the poll finds the rows
        wait_until(lambda: len(receiver.event_ids()) == 5, "not delivered while polling")
        assert loop.thread.is_alive() and wakeups.connects == 1

        wakeups.retry_every = 0.1
        wait_until(lambda: wakeups.listening and wakeups.connects == 2, "did not listen again")
        finish(factory, receiver.url, 5)
        wait_until(lambda: len(receiver.event_ids()) == 10, "not delivered after listening again")
    with factory() as s:
        assert Counter(s.scalars(select(WebhookDelivery.state))) == {"delivered": 10}


def test_redeliver_wakes_the_loop(factory: sessionmaker[Session], receiver: Receiver) -> None:
    from db import webhooks

    finish(factory, receiver.url, 1)
    with Loop(factory, poll=NO_POLL) as loop:
        wait_until(lambda: len(receiver.events()) == 1, "first delivery")
        wait_until(lambda: loop.deliverer.wakeups.listening, "listen")
        time.sleep(0.5)  # let the loop finish the round that follows its LISTEN and wait
        with factory() as s:
            delivery_id: uuid.UUID = s.scalars(select(WebhookDelivery.id)).one()
        with factory.begin() as s:
            assert webhooks.redeliver(s, delivery_id)
        # The poll is an hour away: only redeliver's NOTIFY can start this round.
        wait_until(lambda: len(receiver.events()) == 2, "redelivery waited for the poll")
    assert {got.headers["X-Dfscan-Event-Id"] for got in receiver.events()} == {str(delivery_id)}


def test_a_tenants_own_secret_is_enough_and_events_with_no_secret_at_all_wait(
    factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Without DFSCAN_WEBHOOK_SECRET, a tenant with its own secret still gets its events, signed with it;
    the default tenant's (no secret of its own) are not sent unsigned, nor lost: they wait, their attempt
    not counted, and go out signed with DFSCAN_WEBHOOK_SECRET once it is set."""
    from db.tenants import create_tenant, webhook_secrets
    from dfscan.webhooks import SIGNATURE_HEADER, verify

    with factory.begin() as s:
        tenant = create_tenant(s, "acme")
        acme, (acme_secret,) = tenant.id, webhook_secrets(tenant)
    with factory.begin() as s:
        _, own, _ = jobs.create_submission(
            s, ["/img/a.jpg"], callback_url=receiver.url, callback_events=["job.completed"], tenant_id=acme
        )
        _, shared, _ = jobs.create_submission(
            s, ["/img/b.jpg"], callback_url=receiver.url, callback_events=["job.completed"]
        )
    with factory.begin() as s:
        for job in (*own, *shared):
            assert jobs.finish_failed(s, job.id, code="CORRUPT_IMAGE", message="broken")

    unset = Deliverer(factory, settings_for(factory, webhook_secret=""))
    try:
        report = unset.deliver_once()
    finally:
        unset.close()
    assert (report.delivered, report.failed) == (1, 0)
    (got,) = receiver.events()
    assert got.event["data"]["job_id"] == str(own[0].id)
    assert verify(acme_secret, got.headers[SIGNATURE_HEADER], got.body)
    with factory() as s:
        waiting = s.scalars(select(WebhookDelivery).where(WebhookDelivery.state == "pending")).one()
        assert waiting.job_id == shared[0].id and waiting.attempts == 0
        db_now = s.scalar(select(func.now()))
        assert db_now is not None and waiting.next_attempt_at > db_now  # not claimed again at once

    with factory.begin() as s:  # the operator sets the secret; the waiting event is due again
        s.execute(update(WebhookDelivery).values(next_attempt_at=func.now()))
    signed = Deliverer(factory, settings_for(factory, webhook_secret="whsec-set-later"))
    try:
        assert signed.deliver_once().delivered == 1
    finally:
        signed.close()
    later = [r for r in receiver.events() if r.event["data"]["job_id"] == str(shared[0].id)]
    (got,) = later
    assert verify("whsec-set-later", got.headers[SIGNATURE_HEADER], got.body)
    assert not verify(acme_secret, got.headers[SIGNATURE_HEADER], got.body)
