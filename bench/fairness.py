"""Tenant fair share on the bulk lane: tenant B's latency alone vs beside tenant A's flood.

``python -m bench.fairness [--pairs 3] [--flood 200] [--few 4] [--concurrency 4]``

Each run is a whole process (this module with ``--one MODE``) on a fresh, migrated Postgres database and a
Redis server of its own, with one ``dfscan worker --queues inference`` and a ViT-Tiny-sized random
checkpoint (tens of ms an image on CPU). Modes, run in turn within each pair (alone, fair, fifo, ...):

- ``alone``: tenant B submits ``--few`` images to an idle worker;
- ``fair``: tenant A submits ``--flood`` images, and once the worker has judged one of them, B submits
  its ``--few`` (DFSCAN_FAIR_SHARE on, the default);
- ``fifo``: the same with DFSCAN_FAIR_SHARE=false (one FIFO for every tenant: the baseline).

B's latency is from the start of its submit to its last job's ``finished_at``; the worker's CPU seconds are
read over the same span. The table gives medians and (min-max) over the pairs, and each mode's median
latency over ``alone``'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

MODES = ("alone", "fair", "fifo")


def _submit(client: object, tenant_id: uuid.UUID, sources: Sequence[str]) -> uuid.UUID:
    from db import jobs
    from dfscan.outbox import send_jobs
    from producer.client import ScanClient

    assert isinstance(client, ScanClient)
    with client.sessions.begin() as session:
        submission, new_jobs, _ = jobs.create_submission(session, list(sources), tenant_id=tenant_id)
        pending = [(job.id, job.priority) for job in new_jobs]
        submission_id = submission.id
    send_jobs(client.app, client.sessions, pending, fair_share=client.settings.fair_share)
    return submission_id


def _until(condition: object, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def one(mode: str, flood: int, few: int, concurrency: int) -> dict[str, float]:
    from bench._service import (
        fresh_postgres_url,
        private_redis,
        running_worker,
        worker_env,
        write_small_images,
    )
    from db.migrate import upgrade
    from db.models import ScanJob
    from db.tenants import create_tenant
    from dfscan.settings import Settings
    from producer.client import ScanClient
    from tests.fixtures.service import save_slow_vit

    with tempfile.TemporaryDirectory() as tmp, fresh_postgres_url() as db_url, private_redis() as server:
        root, broker = Path(tmp), server.url
        upgrade(db_url)
        model = save_slow_vit(root / "model")
        images = root / "images"
        warm = [str(p) for p in write_small_images(images, 1, size=(320, 240), prefix="warm", seed=1)]
        flood_paths = [str(p) for p in write_small_images(images, flood, size=(320, 240), prefix="a", seed=2)]
        few_paths = [str(p) for p in write_small_images(images, few, size=(320, 240), prefix="b", seed=3)]
        fair = mode != "fifo"
        settings = Settings(database_url=db_url, broker_url=broker, fair_share=fair, _env_file=None)  # type: ignore[call-arg]
        client = ScanClient(settings)
        with client.sessions.begin() as session:
            a, b = create_tenant(session, "flooder").id, create_tenant(session, "quiet").id
        env = worker_env(db_url, broker, model, images, threads=2, batch_size=8)
        env["DFSCAN_FAIR_SHARE"] = "true" if fair else "false"

        def done(submission_id: uuid.UUID) -> int:
            with client.sessions() as session:
                query = select(func.count()).where(
                    ScanJob.submission_id == submission_id, ScanJob.state == "done"
                )
                return int(session.scalar(query) or 0)

        with running_worker(env, root / "worker.log", concurrency=concurrency) as worker:
            warm_id = client.submit(warm).id
            _until(lambda: done(warm_id) == 1, "the warm-up image")
            if mode != "alone":
                flood_id = _submit(client, a, flood_paths)
                _until(lambda: done(flood_id) >= 1, "the flood's first job")
            cpu0, t0 = worker.cpu_seconds(), time.time()
            few_id = _submit(client, b, few_paths)
            _until(lambda: done(few_id) == few, "tenant B's jobs")
            cpu = worker.cpu_seconds() - cpu0
            with client.sessions() as session:
                last = session.scalar(
                    select(func.max(ScanJob.finished_at)).where(ScanJob.submission_id == few_id)
                )
                flood_done = 0 if mode == "alone" else done(flood_id)
        assert last is not None
        client.engine.dispose()
        return {"latency": last.timestamp() - t0, "cpu": cpu, "flood_done": float(flood_done)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--few", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.flood, args.few, args.concurrency)))
        return
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for pair in range(args.pairs):
        for mode in MODES:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.fairness",
                    "--one",
                    mode,
                    "--flood",
                    str(args.flood),
                    "--few",
                    str(args.few),
                    "--concurrency",
                    str(args.concurrency),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs[mode].append(result)
            print(f"pair {pair + 1} {mode}: {result}", file=sys.stderr)

    def spread(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    alone = statistics.median(r["latency"] for r in runs["alone"])
    table = Table(
        title=f"tenant B: {args.few} images, alone and beside tenant A's {args.flood}; "
        f"{args.pairs} alternating runs each, medians (min-max)"
    )
    for column in ("mode", "B latency s", "x alone", "worker CPU s", "A jobs done by then"):
        table.add_column(column, justify="right")
    for mode in MODES:
        rows = runs[mode]
        latency = [r["latency"] for r in rows]
        table.add_row(
            mode,
            spread(latency, ".2f"),
            f"{statistics.median(latency) / alone:.2f}",
            spread([r["cpu"] for r in rows], ".2f"),
            spread([r["flood_done"] for r in rows], ".0f"),
        )
    Console().print(table)


if __name__ == "__main__":
    main()
