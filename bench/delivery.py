"""What one webhook delivery costs the delivery process, in CPU, apart from the receiver and Postgres.

``python -m bench.delivery [--events N] [--rounds R] [--profile]``: a fresh, migrated Postgres
database; ``N`` pending deliveries to a receiver on 127.0.0.1 (allow-listed) that runs in a *child
process*, so ``time.process_time()`` of this process is the deliverer's CPU alone (the receiver's is
read from the child, Postgres's from its backends in ``/proc``). Each round inserts ``N`` rows and
times ``Deliverer.deliver_once()`` until they are all delivered; the table gives medians over the
rounds. ``--profile`` prints the top of a cProfile of one more round.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import multiprocessing
import os
import pstats
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, event, insert, text

from db.migrate import upgrade
from db.models import Submission, WebhookDelivery, utcnow
from db.session import new_engine, new_session_factory
from dfscan.settings import Settings
from tests.fixtures.databases import fresh_postgres_url
from tests.fixtures.webhook_receiver import Receiver, free_port
from worker.delivery import Deliverer


def _serve(port: int, ready: Any, stop: Any) -> None:
    receiver = Receiver(port=port)
    receiver.start()
    ready.set()
    stop.wait()
    receiver.stop()


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process (its own, not its children's)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu(engine: Engine) -> float:
    """CPU of the Postgres backends serving this database (only readable when Postgres runs here)."""
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):  # a backend that just ended
                total += _cpu_of(int(pid))
        return total


@dataclass
class Round:
    events: int
    seconds: float
    cpu: float
    receiver_cpu: float
    postgres_cpu: float
    statements: int
    rounds: int


def _insert(engine: Engine, url: str, n: int) -> None:
    sessions = new_session_factory(engine)
    now = utcnow()
    with sessions.begin() as session:
        sub = Submission(n_jobs=n, callback_url=url)
        session.add(sub)
        session.flush()
        rows = []
        for i in range(n):
            event_id = uuid.uuid4()
            body = json.dumps(
                {"id": str(event_id), "type": "job.completed", "data": {"i": i, "pad": "x" * 600}}
            )
            rows.append(
                {
                    "id": event_id,
                    "submission_id": sub.id,
                    "job_id": None,
                    "event": "job.completed",
                    "dedupe_key": f"bench:{event_id}",
                    "url": url,
                    "body": body,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        session.execute(insert(WebhookDelivery), rows)


def one_round(deliverer: Deliverer, engine: Engine, url: str, n: int, receiver_pid: int) -> Round:
    _insert(engine, url, n)
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(engine, "before_cursor_execute", count)
    rx0, pg0 = _cpu_of(receiver_pid), _postgres_cpu(engine)
    cpu0, t0 = time.process_time(), time.perf_counter()
    done = rounds = 0
    while done < n:
        report = deliverer.deliver_once()
        assert report.retrying == report.failed == 0, report
        done += report.delivered
        rounds += 1
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    event.remove(engine, "before_cursor_execute", count)
    return Round(
        n, seconds, cpu, _cpu_of(receiver_pid) - rx0, _postgres_cpu(engine) - pg0, statements, rounds
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_serve, args=(port, ready, stop), daemon=True)
    child.start()
    ready.wait(30)
    url = f"http://127.0.0.1:{port}/hooks/dfscan"
    try:
        with fresh_postgres_url() as db_url:
            upgrade(db_url)
            engine = new_engine(db_url)
            settings = Settings(
                database_url=db_url,
                webhook_secret="bench-secret",
                webhook_allowlist="127.0.0.1",
                webhook_timeout=5,
            )
            deliverer = Deliverer(new_session_factory(engine), settings)
            one_round(deliverer, engine, url, 32, child.pid)  # warm: imports, pools, connections
            runs = [one_round(deliverer, engine, url, args.events, child.pid) for _ in range(args.rounds)]
            if args.profile:
                profile = cProfile.Profile()
                profile.enable()
                one_round(deliverer, engine, url, args.events, child.pid)
                profile.disable()
                pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
                pstats.Stats(profile).sort_stats("tottime").print_stats(25)
            deliverer.close()
            engine.dispose()
    finally:
        stop.set()
        child.join(10)

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    table = Table(title=f"webhook delivery: {args.events} events x {args.rounds} rounds, medians (min-max)")
    for column in (
        "deliverer CPU ms/event",
        "receiver CPU ms/event",
        "Postgres CPU ms/event",
        "wall ms/event",
        "SQL statements/round",
        "claims",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        med([1000 * r.cpu / r.events for r in runs]),
        med([1000 * r.receiver_cpu / r.events for r in runs]),
        med([1000 * r.postgres_cpu / r.events for r in runs]),
        med([1000 * r.seconds / r.events for r in runs]),
        med([r.statements / r.rounds for r in runs]),
        med([float(r.rounds) for r in runs]),
    )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
