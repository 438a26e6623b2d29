"""What the HTTP API costs on top of ScanClient, and how fast it answers.

``python -m bench.api [--rate R] [--seconds S] [--batches K] [--pairs P] [--redis-db N]``: a fresh,
migrated Postgres database and a Redis database of its own (flushed before and after), `dfscan api` in a
subprocess on 127.0.0.1, no worker (intake only: jobs are written and their messages sent, nothing is
judged).

1. Latency: single-source ``POST /v1/scans`` (one URL, JSON) at a steady ``R`` requests per second for
   ``S`` seconds from one client thread: p50, p90, p99 and max in ms, and how many kept to the schedule.
2. Throughput and CPU, paired: ``K`` batches of 100 URLs through the API (``POST /v1/scans``), then the
   same through ``ScanClient.submit`` in this process, alternating A B A B for ``P`` pairs. Jobs per second
   of wall time, and CPU ms per job: for the API the client's CPU plus the server process's CPU, for
   ScanClient this process's CPU. Postgres and Redis do the same work in both and are left out. The ratio
   API / ScanClient is the figure to hold under 1.5x.

The machine's load is printed beside the figures (loadavg, cores): on a shared host, read ratios, not
absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu(pid: int | None = None) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def latency(http: Any, rate: float, seconds: float) -> dict[str, float]:
    interval = 1.0 / rate
    n = int(rate * seconds)
    start = time.perf_counter()
    ms: list[float] = []
    late = 0
    for i in range(n):
        due = start + i * interval
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        elif now - due > interval:
            late += 1
        t0 = time.perf_counter()
        response = http.post("/v1/scans", json={"sources": [f"https://img.example/{uuid.uuid4()}.jpg"]})
        ms.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 202, response.text
    return {
        "n": n,
        "p50": _pct(ms, 0.5),
        "p90": _pct(ms, 0.9),
        "p99": _pct(ms, 0.99),
        "max": max(ms),
        "late": late,
    }


def api_batches(http: Any, server_pid: int, batches: int) -> dict[str, float]:
    cpu0, server0, t0 = _cpu(), _cpu(server_pid), time.perf_counter()
    for _ in range(batches):
        sources = [f"https://img.example/{uuid.uuid4()}.jpg" for _ in range(100)]
        response = http.post("/v1/scans", json={"sources": sources})
        assert response.status_code == 202, response.text
    wall = time.perf_counter() - t0
    cpu = (_cpu() - cpu0) + (_cpu(server_pid) - server0)
    jobs = batches * 100
    return {"jobs_s": jobs / wall, "cpu_ms_job": cpu * 1000 / jobs, "wall": wall}


def client_batches(client: Any, batches: int) -> dict[str, float]:
    cpu0, t0 = _cpu(), time.perf_counter()
    for _ in range(batches):
        client.submit([f"https://img.example/{uuid.uuid4()}.jpg" for _ in range(100)])
    wall = time.perf_counter() - t0
    jobs = batches * 100
    return {"jobs_s": jobs / wall, "cpu_ms_job": (_cpu() - cpu0) * 1000 / jobs, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5.0, help="single-source requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of the steady-rate run")
    parser.add_argument("--batches", type=int, default=10, help="batches of 100 per run")
    parser.add_argument("--pairs", type=int, default=3, help="API/ScanClient pairs (A B A B ...)")
    parser.add_argument("--redis-db", type=int, default=int(os.environ.get("DFSCAN_TEST_REDIS_DB", "7")))
    args = parser.parse_args()

    import redis

    from db.migrate import upgrade
    from dfscan.settings import Settings
    from producer.client import ScanClient
    from tests.fixtures.api import make_key, start_api
    from tests.fixtures.databases import fresh_postgres_url
    from tests.fixtures.service import REDIS_URL

    broker = f"{REDIS_URL}/{args.redis_db}"
    flush = redis.Redis.from_url(broker)
    flush.flushdb()
    with fresh_postgres_url() as url, tempfile.TemporaryDirectory() as tmp:
        upgrade(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DFSCAN_")}
        env.update(
            {
                "DFSCAN_DATABASE_URL": url,
                "DFSCAN_BROKER_URL": broker,
                "DFSCAN_UPLOAD_STORE": str(Path(tmp) / "uploads"),
                "DFSCAN_API_RATE_LIMIT": "100000/second",
                "DFSCAN_API_MAX_OUTSTANDING": "10000000",
                "DFSCAN_QUEUE_MAX_DEPTH": "10000000",
            }
        )
        server = start_api(env, url, Path(tmp) / "api.log")
        try:
            key = make_key(url, "bench", "submit,read")
            client = ScanClient(Settings(database_url=url, broker_url=broker, queue_max_depth=10_000_000))
            with server.client(key) as http:
                for _ in range(20):  # warm both paths (connections, imports, statement caches)
                    http.post("/v1/scans", json={"sources": ["https://img.example/warm.jpg"]})
                client.submit(["https://img.example/warm.jpg"])
                load = os.getloadavg()
                print(f"machine: {os.cpu_count()} cores, loadavg {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
                lat = latency(http, args.rate, args.seconds)
                print(
                    f"\nPOST /v1/scans, one URL, {args.rate:g}/s for {args.seconds:g} s ({lat['n']:.0f} requests, "
                    f"{lat['late']:.0f} behind schedule):"
                )
                print(
                    f"  p50 {lat['p50']:.1f} ms  p90 {lat['p90']:.1f} ms  p99 {lat['p99']:.1f} ms  max {lat['max']:.1f} ms"
                )
                api_runs, client_runs = [], []
                for _ in range(args.pairs):
                    api_runs.append(api_batches(http, server.proc.pid, args.batches))
                    client_runs.append(client_batches(client, args.batches))
                    flush.delete("inference", "inference.interactive")
            print(
                f"\nbatches of 100 URLs, {args.batches} batches per run, {args.pairs} pairs (API then ScanClient):"
            )
            print(f"  {'':12} {'jobs/s (median, min-max)':>28} {'CPU ms/job (median, min-max)':>32}")
            for name, runs in (("API", api_runs), ("ScanClient", client_runs)):
                js = [r["jobs_s"] for r in runs]
                cpu = [r["cpu_ms_job"] for r in runs]
                print(
                    f"  {name:12} {statistics.median(js):10.0f} ({min(js):.0f}-{max(js):.0f}){'':8}"
                    f"{statistics.median(cpu):10.3f} ({min(cpu):.3f}-{max(cpu):.3f})"
                )
            ratios = [a["cpu_ms_job"] / c["cpu_ms_job"] for a, c in zip(api_runs, client_runs, strict=True)]
            print(
                f"  CPU per job, API / ScanClient: median {statistics.median(ratios):.2f}x "
                f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)}); target <= 1.5x"
            )
            walls = [c["jobs_s"] / a["jobs_s"] for a, c in zip(api_runs, client_runs, strict=True)]
            print(f"  wall time per job, API / ScanClient: median {statistics.median(walls):.2f}x")
        finally:
            server.stop()
            flush.flushdb()


if __name__ == "__main__":
    main()
