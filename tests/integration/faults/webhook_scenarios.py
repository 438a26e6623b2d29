"""Webhook fault scenarios, shared by ``tests/integration/test_webhook_fairness.py`` and ``python -m
bench.faults`` (``SCENARIOS``, with the timing bounds the default suite never asserts).

Each scenario takes a migrated Postgres database URL, runs real delivery loops (``Deliverer.run`` on
threads, each with its own engine, as separate processes would) against receivers on 127.0.0.1, and
returns an ``Outcome`` whose row reads: submitted = events written, done = delivered, failed = given
up, lost = events a loop should have delivered and did not, duplicated = POSTs of one event that
overlapped, or attempts counted other than once per POST.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from db.models import WebhookDelivery
from db.results import CheckReport
from db.session import new_engine, new_session_factory
from dfscan.settings import Settings
from tests.fixtures.service import REDIS_DB, REDIS_URL, Service
from tests.fixtures.webhook_receiver import Receiver
from tests.integration.faults.scenarios import Outcome
from worker.delivery import Deliverer

SECRET = "whsec-faults"


def settings_for(database_url: str, timeout: float) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_url,
        webhook_secret=SECRET,
        webhook_allowlist="127.0.0.1",
        webhook_timeout=timeout,
        broker_url=f"{REDIS_URL}/{REDIS_DB}",  # the loops' shared breakers (keys named by the database)
    )


def write_events(sessions: sessionmaker[Session], url: str, n: int) -> tuple[uuid.UUID, float]:
    """One submission of ``n`` jobs failed in one transaction: ``n`` job.completed events for ``url``.
    Returns the submission id and the time.time() of the commit."""
    with sessions.begin() as s:
        submission, rows, _ = jobs.create_submission(
            s, [f"/img/{i}.jpg" for i in range(n)], callback_url=url, callback_events=["job.completed"]
        )
    with sessions.begin() as s:
        for job in rows:
            jobs.finish_failed(s, job.id, code="CORRUPT_IMAGE", message="broken")
    return submission.id, time.time()


@contextmanager
def loops(database_url: str, n: int, timeout: float) -> Iterator[list[Deliverer]]:
    """``n`` delivery loops, each with its own engine and thread; stopped (POSTs in flight recorded)
    on exit."""
    with ExitStack() as stack:
        running: list[tuple[Deliverer, threading.Event, threading.Thread, Engine]] = []
        for i in range(n):
            engine = new_engine(database_url)
            deliverer = Deliverer(new_session_factory(engine), settings_for(database_url, timeout))
            stop = threading.Event()
            thread = threading.Thread(target=deliverer.run, args=(stop,), name=f"loop-{i}", daemon=True)
            thread.start()
            running.append((deliverer, stop, thread, engine))

        def close() -> None:
            for _, stop, _, _ in running:
                stop.set()
            for deliverer, _, thread, engine in running:
                thread.join(timeout + 30)
                deliverer.close()
                engine.dispose()
                assert not thread.is_alive(), f"{thread.name} did not stop"

        stack.callback(close)
        yield [deliverer for deliverer, *_ in running]


def wait_until(predicate: Callable[[], bool], ceiling: float, what: str) -> None:
    """Until ``predicate()``; AssertionError after ``ceiling`` seconds (a generous bound, not a claim)."""
    deadline = time.monotonic() + ceiling
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {ceiling:.0f} s")
        time.sleep(0.05)


def rows_by_url(sessions: sessionmaker[Session]) -> dict[str, list[WebhookDelivery]]:
    out: dict[str, list[WebhookDelivery]] = {}
    with sessions() as s:
        for row in s.scalars(select(WebhookDelivery)):
            out.setdefault(row.url, []).append(row)
    return out


def attempts_mismatch(receiver: Receiver, rows: list[WebhookDelivery]) -> list[uuid.UUID]:
    """Rows whose ``attempts`` differ from the POSTs of their id the receiver got (after the loops
    stopped: every claim is then settled or released)."""
    posts = Counter(got.headers["X-Dfscan-Event-Id"] for got in receiver.events())
    return [row.id for row in rows if posts.get(str(row.id), 0) != row.attempts]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else 0.0


# --- a hung receiver beside a healthy one ---------------------------------------------------------


def _healthy_alone(
    database_url: str, sessions: sessionmaker[Session], n: int, timeout: float, batch: int
) -> list[float]:
    """The baseline: the healthy receiver's latencies (commit to arrival) with no hung receiver."""
    alone = Receiver()
    alone.start()
    committed: dict[str, float] = {}
    try:
        with loops(database_url, 1, timeout):
            for _ in range(n // batch):
                sub_id, at = write_events(sessions, alone.url, batch)
                committed[str(sub_id)] = at
                time.sleep(0.02)
            wait_until(lambda: len(alone.event_ids()) >= n, 120, "events alone not all delivered")
    finally:
        alone.stop()
    return [got.at - committed[str(got.event["data"]["submission_id"])] for got in alone.events()]


def hung_beside_healthy(
    database_url: str, *, n: int = 200, timeout: float = 10.0, batch: int = 10, baseline: bool = True
) -> Outcome:
    """``n`` events for a receiver that never answers and ``n`` for a healthy one, written as a stream
    of small submissions (the hung receiver's first), one loop. The healthy receiver's events must all
    arrive while the hung one's are still pending; notes give the healthy latency (commit to arrival),
    and with ``baseline`` the same stream's latency with no hung receiver, measured first."""
    engine = new_engine(database_url)
    sessions = new_session_factory(engine)
    alone = _healthy_alone(database_url, sessions, n, timeout, batch) if baseline else []
    hung, healthy = Receiver(), Receiver()
    hung.hang()
    for rx in (hung, healthy):
        rx.start()
    committed: dict[str, float] = {}
    try:
        with loops(database_url, 1, timeout):
            for _ in range(n // batch):
                write_events(sessions, hung.url, batch)
                sub_id, at = write_events(sessions, healthy.url, batch)
                committed[str(sub_id)] = at
                time.sleep(0.02)
            wait_until(lambda: len(healthy.event_ids()) >= n, 120, "healthy events not all delivered")
            hung_posts_then = len(hung.events())
            with sessions() as s:
                hung_pending = s.scalar(
                    select(func.count()).where(
                        WebhookDelivery.url == hung.url, WebhookDelivery.state == "pending"
                    )
                )
            hung.release()  # let the held handlers go; the loop stops after its POSTs end
        latencies = [got.at - committed[str(got.event["data"]["submission_id"])] for got in healthy.events()]
        by_url = rows_by_url(sessions)
        healthy_rows = by_url.get(healthy.url, [])
        duplicates = [row.id for row in healthy_rows if row.attempts != 1] + attempts_mismatch(
            hung, by_url.get(hung.url, [])
        )
    finally:
        hung.release()
        for rx in (hung, healthy):
            rx.stop()
        engine.dispose()
    delivered = sum(1 for row in healthy_rows if row.state == "delivered")
    report = CheckReport(
        submission_id=uuid.uuid4(),
        submitted=2 * n,
        done=delivered,
        lost=[row.id for row in healthy_rows if row.state != "delivered"],
        duplicated=duplicates,
    )
    notes: dict[str, object] = {
        "healthy_p50_s": round(statistics.median(latencies), 2),
        "healthy_p99_s": round(percentile(latencies, 0.99), 2),
        "healthy_max_s": round(max(latencies), 2),
    }
    if alone:
        notes["alone_p50_s"] = round(statistics.median(alone), 2)
        notes["alone_p99_s"] = round(percentile(alone, 0.99), 2)
    notes.update(hung_pending=int(hung_pending or 0), hung_posts=hung_posts_then)
    return Outcome("hung receiver beside a healthy one", report, notes)


# --- several loops, slow and hung receivers -------------------------------------------------------


def loops_with_slow_receivers(
    database_url: str, *, n_loops: int = 3, n: int = 64, delay: float = 9.0, timeout: float = 10.0
) -> Outcome:
    """``n_loops`` loops share ``n`` events for each of two receivers that answer in ``delay`` s (just
    under the timeout) and ``n`` for one that hangs. No event may be POSTed while a POST of it is in
    flight, a slow receiver's events arrive once each, and every row's attempts equal its POSTs."""
    engine = new_engine(database_url)
    sessions = new_session_factory(engine)
    slow = [Receiver(delay=delay), Receiver(delay=delay)]
    hung = Receiver()
    hung.hang()
    for rx in (*slow, hung):
        rx.start()
    try:
        for rx in (*slow, hung):
            write_events(sessions, rx.url, n)
        with loops(database_url, n_loops, timeout):
            wait_until(
                lambda: all(len(rx.event_ids()) >= n for rx in slow),
                60 + 4 * n * delay / n_loops,
                "slow receivers' events not all delivered",
            )
            hung.release()
        by_url = rows_by_url(sessions)
    finally:
        hung.release()
        for rx in (*slow, hung):
            rx.stop()
        engine.dispose()
    slow_rows = [row for rx in slow for row in by_url.get(rx.url, [])]
    twice = [got for rx in slow for got, k in Counter(rx.event_ids_posted()).items() if k > 1]
    overlapping = [event for rx in slow for event in rx.overlapping]
    mismatched = [i for rx in (*slow, hung) for i in attempts_mismatch(rx, by_url.get(rx.url, []))]
    report = CheckReport(
        submission_id=uuid.uuid4(),
        submitted=3 * n,
        done=sum(1 for row in slow_rows if row.state == "delivered"),
        lost=[row.id for row in slow_rows if row.state != "delivered"],
        duplicated=[uuid.UUID(i) for i in sorted(set(twice) | set(overlapping))] + mismatched,
    )
    return Outcome(
        f"{n_loops} delivery loops, slow receivers",
        report,
        {
            "duplicate_posts": len(twice),
            "overlapping_posts": len(overlapping),
            "attempts_not_once": len(mismatched),
            "hung_posts": len(hung.events()),
        },
    )


# --- the exporter's scrape over a long outbox history ---------------------------------------------


def exporter_scrape_at_history(database_url: str, *, rows: int = 300_000, scrapes: int = 50) -> Outcome:
    """``rows`` delivered events (plus 100 pending and 100 given up) written straight in SQL, then
    the exporter's Postgres read timed ``scrapes`` times, beside the query it replaced (which
    counted every state), on the same data. Counts are checked against plain SQL."""
    from dfscan.exporter import Snapshot, read_postgres

    engine = new_engine(database_url)
    sessions = new_session_factory(engine)
    try:
        with sessions.begin() as s:
            sub_id, _ = uuid.uuid4(), None
            s.execute(
                text("INSERT INTO submissions (id, n_jobs) VALUES (:id, 0)"),
                {"id": sub_id},
            )
            s.execute(
                text(
                    "INSERT INTO webhook_deliveries (id, submission_id, event, dedupe_key, url, receiver, body,"
                    " state, attempts, next_attempt_at, created_at, updated_at, delivered_at) "
                    "SELECT md5(i::text || 'x')::uuid, :sub, 'job.completed', 'k' || i, 'https://rx.example/h',"
                    " 'https://rx.example:443', repeat('x', 1000),"
                    " CASE WHEN i <= 100 THEN 'pending' WHEN i <= 200 THEN 'failed' ELSE 'delivered' END,"
                    " 1, now(), now() - (i || ' seconds')::interval, now() - (i || ' seconds')::interval,"
                    " CASE WHEN i > 200 THEN now() END "
                    "FROM generate_series(1, :n) AS i"
                ),
                {"sub": sub_id, "n": rows + 200},
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE webhook_deliveries"))
        new_ms: list[float] = []
        old_ms: list[float] = []
        snap = Snapshot()
        for _ in range(scrapes):
            with sessions() as s:
                started = time.perf_counter()
                read_postgres(s, snap)
                new_ms.append(1000 * (time.perf_counter() - started))
            with sessions() as s:
                started = time.perf_counter()
                s.execute(
                    text("SELECT state, count(*), min(created_at) FROM webhook_deliveries GROUP BY state")
                ).all()
                old_ms.append(1000 * (time.perf_counter() - started))
        with sessions() as s:
            plain = dict(
                s.execute(text("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")).all()
            )
    finally:
        engine.dispose()
    wrong = {state: (snap.deliveries.get(state), plain.get(state)) for state in ("pending", "failed")}
    wrong = {state: pair for state, pair in wrong.items() if pair[0] != pair[1]}
    report = CheckReport(
        submission_id=uuid.uuid4(),
        submitted=rows + 200,
        done=int(plain.get("delivered", 0)),
        failed=int(plain.get("failed", 0)),
        lost=[uuid.uuid4() for _ in wrong],  # a count that disagrees with plain SQL
    )
    return Outcome(
        f"exporter scrape at {rows // 1000}k outbox rows",
        report,
        {
            "scrape_ms_p50": round(statistics.median(new_ms), 2),
            "scrape_ms_p99": round(percentile(new_ms, 0.99), 2),
            "old_query_ms_p50": round(statistics.median(old_ms), 2),
            "wrong_counts": len(wrong),
        },
    )


# --- the make faults rows, with their bounds -----------------------------------------------------

HEALTHY_P99_BOUND_S = 5.0
SCRAPE_BOUND_MS = 20.0


def _hung(svc: Service) -> Outcome:
    outcome = hung_beside_healthy(svc.database_url)
    p99 = outcome.notes["healthy_p99_s"]
    assert isinstance(p99, float)
    if p99 > HEALTHY_P99_BOUND_S or not outcome.notes["hung_pending"]:
        raise AssertionError(
            f"healthy p99 {p99} s > {HEALTHY_P99_BOUND_S} s or none pending: {outcome.notes}"
        )
    return outcome


def _three_loops(svc: Service) -> Outcome:
    return loops_with_slow_receivers(svc.database_url)


def _scrape(svc: Service) -> Outcome:
    outcome = exporter_scrape_at_history(svc.database_url)
    p50 = outcome.notes["scrape_ms_p50"]
    assert isinstance(p50, float)
    if p50 > SCRAPE_BOUND_MS or outcome.notes["wrong_counts"]:
        raise AssertionError(f"scrape {p50} ms > {SCRAPE_BOUND_MS} ms or wrong counts: {outcome.notes}")
    return outcome


SCENARIOS: list[tuple[str, Callable[[Service], Outcome]]] = [
    ("webhooks: hung receiver beside a healthy one", _hung),
    ("webhooks: 3 loops, slow and hung receivers", _three_loops),
    ("webhooks: exporter scrape at 300k outbox rows", _scrape),
]
