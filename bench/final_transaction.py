"""What callbacks cost the transaction that makes jobs final (verdict rows, job rows, webhook events).

``python -m bench.final_transaction [--jobs N] [--threads T] [--batch B] [--pairs P] [--trees A,B]``:
a fresh, migrated Postgres database per run; one submission of ``N`` running jobs; ``T`` threads each
finish ``B`` jobs per transaction with ``jobs.finish_done_many`` (the worker's write path) until all
are done. Each pair runs callbacks *off* (no ``callback_url``) then on (``--events``, default both). With
``--trees``, every run executes in a child process whose code comes from each source tree in turn
(e.g. ``/work/main,.``), so the table compares two versions in one session on the same machine.
The table gives ms per transaction (median, p90) and ms of wall time per job.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def run_once(jobs_n: int, threads: int, batch: int, events: str) -> dict[str, float]:
    """One run; ``events``: off, or the callback events (comma-separated) the submission asks for."""
    from sqlalchemy import update

    from db import jobs
    from db.migrate import upgrade
    from db.models import ScanJob
    from db.session import new_engine, new_session_factory
    from dfscan.verdicts import STORED
    from tests.fixtures.databases import fresh_postgres_url

    with fresh_postgres_url() as url:
        upgrade(url)
        engine = new_engine(url, pool_size=threads + 2)
        sessions = new_session_factory(engine)
        callback = None if events == "off" else "https://rx.example/hooks"
        names = None if events == "off" else events.split(",")
        with sessions.begin() as s:
            _, rows, _ = jobs.create_submission(
                s, [f"/img/{i}.jpg" for i in range(jobs_n)], callback_url=callback, callback_events=names
            )
            ids = [row.id for row in rows]
            s.execute(update(ScanJob).values(state="running", attempts=1))
        verdict = dict.fromkeys(STORED)
        verdict.update(
            label="real", fake_score=0.1, threshold=0.5, model_version="bench", image_sha256="0" * 64
        )
        verdict.update(cached=False, judged_on="image", media="image", worker="bench")
        chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
        lock = threading.Lock()
        tx_ms: list[float] = []

        def work() -> None:
            while True:
                with lock:
                    if not chunks:
                        return
                    chunk = chunks.pop()
                started = time.perf_counter()
                with sessions.begin() as s:
                    jobs.finish_done_many(s, [{"job_id": job_id, **verdict} for job_id in chunk])
                elapsed = 1000 * (time.perf_counter() - started)
                with lock:
                    tx_ms.append(elapsed)

        started = time.perf_counter()
        pool = [threading.Thread(target=work) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        wall = time.perf_counter() - started
        engine.dispose()
    tx_ms.sort()
    return {
        "tx_ms_p50": statistics.median(tx_ms),
        "tx_ms_p90": tx_ms[int(0.9 * (len(tx_ms) - 1))],
        "wall_ms_per_job": 1000 * wall / jobs_n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.final_transaction", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--trees", default="", help="comma-separated source trees to alternate")
    parser.add_argument(
        "--events",
        nargs="*",
        default=["job.completed,submission.completed"],
        help="callback event sets to compare with callbacks off (default: both events)",
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_once(args.jobs, args.threads, args.batch, args.child)))
        return 0
    here = Path(__file__).resolve().parents[1]
    trees = [Path(t).resolve() for t in args.trees.split(",") if t] or [here]
    print("| tree | callbacks | tx ms p50 | tx ms p90 | wall ms/job |")
    print("|---|---|---|---|---|")
    for _ in range(args.pairs):
        for tree in trees:
            for mode in ("off", *args.events):
                env = {**os.environ, "PYTHONPATH": str(tree)}  # this file runs as a script: tree's code
                out = subprocess.run(
                    [sys.executable, __file__, f"--jobs={args.jobs}", f"--threads={args.threads}",
                     f"--batch={args.batch}", f"--child={mode}"],
                    env=env, cwd=tree, capture_output=True, text=True, check=True,
                )  # fmt: skip
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"| {tree.name} | {mode} | {r['tx_ms_p50']:.1f} | {r['tx_ms_p90']:.1f} | "
                    f"{r['wall_ms_per_job']:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
