"""What one webhook delivery costs the delivery process, in CPU, apart from the receiver and Postgres.

``python -m bench.delivery [--events N] [--rounds R] [--profile]``: a fresh, migrated Postgres
database; ``N`` pending deliveries to a receiver on 127.0.0.1 (allow-listed) that runs in a *child
process*, so ``time.process_time()`` of this process is the deliverer's CPU alone (the receiver's is
read from the child, Postgres's from its backends in ``/proc``). Each round inserts ``N`` rows and
times ``Deliverer.deliver_once()`` until they are all delivered; the table gives medians over the
rounds. ``--profile`` prints the top of a cProfile of one more round.

``--steady RATE --seconds S --trees A,B[,A,B...]``: the delivery loop as deployed, a ``dfscan
webhooks deliver`` process (its code from each source tree in turn: alternate two trees for paired
runs), fed one event at a time at ``RATE``/s for ``S`` seconds (each insert commits with ``NOTIFY
dfscan_webhooks``, as the worker's does; a tree without LISTEN ignores it). Per run: the delivery
process's CPU ms per event (from ``/proc``, after a warm-up) and commit -> receiver latency p50/p99.
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
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, event, insert, text
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.models import Submission, WebhookDelivery, utcnow
from db.session import new_engine, new_session_factory
from dfscan.settings import Settings
from tests.fixtures.databases import fresh_postgres_url
from tests.fixtures.webhook_receiver import Receiver, free_port
from worker.delivery import Deliverer


def _serve(port: int, ready: Any, stop: Any, out: str | None = None) -> None:
    receiver = Receiver(port=port)
    receiver.start()
    ready.set()
    stop.wait()
    receiver.stop()
    if out:  # arrival time of each event id, for the steady runs' latency
        arrivals = {got.headers["X-Dfscan-Event-Id"]: got.at for got in receiver.events()}
        with open(out, "w") as f:
            json.dump(arrivals, f)


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


@dataclass
class Steady:
    tree: str
    events: int
    cpu_ms: float
    p50_ms: float
    p99_ms: float
    lost: int


def steady_run(db_url: str, tree: str, rate: float, seconds: float) -> Steady:
    """One run of a ``dfscan webhooks deliver`` process from ``tree`` under a steady trickle."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks/dfscan"
    handle, out = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_serve, args=(port, ready, stop, out), daemon=True)
    child.start()
    ready.wait(30)
    env = {
        **os.environ,
        "PYTHONPATH": tree,
        "DFSCAN_DATABASE_URL": db_url,
        "DFSCAN_WEBHOOK_SECRET": "bench-secret",
        "DFSCAN_WEBHOOK_ALLOWLIST": "127.0.0.1",
        "DFSCAN_WEBHOOK_POLL_INTERVAL": "0.2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfscan.cli.main", "webhooks", "deliver"],
        env=env,
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = new_engine(db_url)
    sessions = new_session_factory(engine)
    committed: dict[str, float] = {}
    try:
        for _ in range(10):  # warm-up: imports, pools, the LISTEN connection
            committed.update(_insert_one(sessions, url))
            time.sleep(0.1)
        time.sleep(1.0)
        cpu0 = _cpu_of(proc.pid)
        measured: dict[str, float] = {}
        start = time.monotonic()
        n = int(rate * seconds)
        for i in range(n):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            measured.update(_insert_one(sessions, url))
        time.sleep(1.0)  # the last ones arrive
        cpu = _cpu_of(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(10)
        stop.set()
        child.join(10)
        engine.dispose()
    with open(out) as f:
        arrivals: dict[str, float] = json.load(f)
    os.unlink(out)
    latencies = sorted(1000 * (arrivals[i] - t) for i, t in measured.items() if i in arrivals)
    return Steady(
        tree,
        len(measured),
        1000 * cpu / len(measured),
        statistics.median(latencies),
        latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        len(measured) - len(latencies),
    )


def _insert_one(sessions: sessionmaker[Session], url: str) -> dict[str, float]:
    """One pending delivery, committed with NOTIFY (as the worker's verdict transaction does)."""
    now = utcnow()
    event_id = uuid.uuid4()
    with sessions.begin() as session:
        sub = Submission(n_jobs=1, callback_url=url)
        session.add(sub)
        session.flush()
        body = json.dumps({"id": str(event_id), "type": "job.completed", "data": {"pad": "x" * 600}})
        session.execute(
            insert(WebhookDelivery),
            [
                {
                    "id": event_id,
                    "submission_id": sub.id,
                    "event": "job.completed",
                    "dedupe_key": f"bench:{event_id}",
                    "url": url,
                    "body": body,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        session.execute(text("NOTIFY dfscan_webhooks"))
    return {str(event_id): time.time()}


def steady(args: argparse.Namespace) -> None:
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    runs = []
    with fresh_postgres_url() as db_url:
        upgrade(db_url)
        for tree in trees:
            runs.append(steady_run(db_url, tree, args.steady, args.seconds))
            r = runs[-1]
            print(
                f"{r.tree}: {r.events} events, delivery CPU {r.cpu_ms:.3f} ms/event, "
                f"latency p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms, lost {r.lost}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in runs], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--steady", type=float, help="events per second, one at a time")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--trees", default=".", help="source trees of the delivery process, in run order")
    parser.add_argument("--json", help="write the steady runs here")
    args = parser.parse_args()
    if args.steady:
        steady(args)
        return

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
