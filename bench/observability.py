"""What metrics and webhooks cost, and how fast a webhook follows its verdict.

``python -m bench.observability [--images N] [--pairs P] [--latency-seconds S] [--json PATH]``, on a
fresh Postgres database and a flushed Redis database (``DFSCAN_BENCH_REDIS_DB``), the tiny model
(so the system's own overhead is what is measured, the worst case for a relative cost):

- **cost**: paired, alternating whole-process runs (A B, B A, A B, ...): *off* is a worker with no
  metrics port and submissions without a callback; *on* is a worker serving metrics (scraped every
  second), every job with a ``callback_url`` to a receiver on 127.0.0.1, and a ``dfscan webhooks
  deliver`` process. Throughput is images / (first submit -> last job final), each run on its own
  fresh images (no sha256 cache hits). Medians and spread of each side, the ratio of medians (target
  on/off >= 0.97), worker CPU ms per image, and the delivery process's CPU.
- **latency**: single-image submits at a steady rate (half the measured *off* rate, at most 40/s),
  each with a callback; verdict-to-webhook = arrival at the receiver - ``scan_jobs.finished_at``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from bench import _service
from bench.core import CACHE as CORE_CACHE
from bench.core import random_vit_base
from bench.system import percentile, wait_final, warm_up
from db.migrate import upgrade
from dfscan.settings import Settings
from producer.client import ScanClient
from tests.fixtures.webhook_receiver import Receiver, free_port

log = logging.getLogger(__name__)
OUT = Path(__file__).resolve().parent / "out"
SECRET = "bench-webhook-secret"
TARGET = 0.97  # on / off throughput


@dataclass
class Run:
    variant: str
    images: int
    seconds: float
    worker_cpu: float
    deliverer_cpu: float = 0.0
    delivered_after: float | None = None  # seconds from first submit until every event arrived
    machine_cpu: float = 0.0  # busy CPU seconds of the whole machine (every process) during the run

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def machine_busy() -> float:
    """Busy CPU seconds of every core since boot (/proc/stat: all but idle and iowait; steal excluded)."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(x) for x in Path("/proc/stat").read_text().split()[1:8]
    )
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def deliverer(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    handle = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfscan.cli.main", "webhooks", "deliver"],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextmanager
def scraper(port: int) -> Iterator[list[int]]:
    """Scrape the worker's /metrics every second (what Prometheus would do, a few times as often)."""
    stop = threading.Event()
    scrapes: list[int] = []

    def loop() -> None:
        while not stop.wait(1.0):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                    scrapes.append(len(answer.read()))
            except OSError:
                pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield scrapes
    finally:
        stop.set()
        thread.join(5)


def one_run(
    variant: str,
    index: int,
    tmp: Path,
    db_url: str,
    broker: str,
    model: Path,
    n: int,
    receiver: Receiver,
    faces: str = "off",
) -> Run:
    metrics_on = variant in ("on", "metrics")
    hooks_on = variant in ("on", "webhooks")
    on = hooks_on
    images = tmp / f"run-{index}-{variant}"
    warm = _service.write_small_images(images, 32, size=(128, 96), prefix="warm", seed=10_000 + index)
    paths = _service.write_small_images(images, n, size=(128, 96), prefix="img", seed=20_000 + index)
    env = _service.worker_env(db_url, broker, model, images, threads=1, batch_size=16)
    env.update(
        {"DFSCAN_WEBHOOK_SECRET": SECRET, "DFSCAN_WEBHOOK_ALLOWLIST": "127.0.0.1", "DFSCAN_FACES": faces}
    )
    port = free_port()
    if metrics_on:
        env["DFSCAN_METRICS_PORT"] = str(port)
    settings = Settings(  # type: ignore[call-arg]
        database_url=db_url, broker_url=broker, webhook_allowlist=("127.0.0.1",), _env_file=None
    )
    callback = {"callback_url": receiver.url} if on else {}
    with (
        _service.running_worker(env, OUT / f"worker-obs-{index}-{variant}.log", concurrency=32) as worker,
        deliverer(env, OUT / f"deliverer-{index}.log") if on else _nothing() as proc,
        scraper(port) if metrics_on else _nothing(),
    ):
        client = ScanClient(settings)
        warm_up(client, warm)
        before = len(receiver.event_ids())
        cpu0 = worker.cpu_seconds()
        dcpu0 = cpu_seconds(proc.pid) if proc is not None else 0.0
        busy0 = machine_busy()
        started = datetime.now(UTC)
        t0 = time.time()
        submission = client.submit([str(p) for p in paths], **callback)  # type: ignore[arg-type]
        _, last = wait_final(client.engine, [submission.id], n, 600)
        seconds = (last - started).total_seconds()
        cpu = worker.cpu_seconds() - cpu0
        delivered_after = None
        if on:
            receiver.wait_for(before + n + 1, timeout=300)  # n job.completed + 1 submission.completed
            delivered_after = time.time() - t0
        # Everything the run made the machine do: worker, delivery, receiver, scrapes, Postgres, Redis.
        busy = machine_busy() - busy0
        dcpu = (cpu_seconds(proc.pid) - dcpu0) if proc is not None else 0.0
        client.engine.dispose()
    return Run(variant, n, seconds, cpu, dcpu, delivered_after, busy)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def latency_run(
    tmp: Path,
    db_url: str,
    broker: str,
    model: Path,
    rate: float,
    seconds: float,
    receiver: Receiver,
    faces: str = "off",
) -> dict[str, float]:
    n = max(20, int(rate * seconds))
    images = tmp / "latency"
    warm = _service.write_small_images(images, 32, size=(128, 96), prefix="warm", seed=7)
    paths = _service.write_small_images(images, n, size=(128, 96), prefix="img", seed=8)
    env = _service.worker_env(db_url, broker, model, images, threads=1, batch_size=16)
    env.update(
        {"DFSCAN_WEBHOOK_SECRET": SECRET, "DFSCAN_WEBHOOK_ALLOWLIST": "127.0.0.1", "DFSCAN_FACES": faces}
    )
    settings = Settings(  # type: ignore[call-arg]
        database_url=db_url, broker_url=broker, webhook_allowlist=("127.0.0.1",), _env_file=None
    )
    with (
        _service.running_worker(env, OUT / "worker-obs-latency.log", concurrency=32),
        deliverer(env, OUT / "deliverer-latency.log"),
    ):
        client = ScanClient(settings)
        warm_up(client, warm)
        before = receiver.events()
        ids: list[uuid.UUID] = []
        start = time.perf_counter()
        for i, path in enumerate(paths):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ids.append(
                client.submit([str(path)], callback_url=receiver.url, callback_events=["job.completed"]).id
            )
        achieved = n / (time.perf_counter() - start)
        wait_final(client.engine, ids, n, 600)
        seen = {r.headers["X-Dfscan-Event-Id"] for r in before}
        receiver.wait_for(len(seen) + n, timeout=300)
        with client.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id::text, extract(epoch FROM finished_at), extract(epoch FROM created_at) "
                    "FROM scan_jobs WHERE submission_id = ANY(:ids)"
                ),
                {"ids": ids},
            ).all()
        client.engine.dispose()
    finished = {row[0]: (float(row[1]), float(row[2])) for row in rows}
    after_verdict, after_submit = [], []
    for got in receiver.events():
        job = got.event["data"].get("job_id")
        if job in finished and got.headers["X-Dfscan-Event-Id"] not in seen:
            seen.add(got.headers["X-Dfscan-Event-Id"])
            after_verdict.append((got.at - finished[job][0]) * 1000)
            after_submit.append((got.at - finished[job][1]) * 1000)
    return {
        "offered_rate": rate,
        "achieved_rate": achieved,
        "events": float(len(after_verdict)),
        "p50_ms": percentile(after_verdict, 50),
        "p99_ms": percentile(after_verdict, 99),
        "max_ms": max(after_verdict),
        "submit_to_webhook_p50_ms": percentile(after_submit, 50),
        "submit_to_webhook_p99_ms": percentile(after_submit, 99),
    }


def spread(values: Sequence[float]) -> str:
    digits = 0 if min(values) >= 20 else 2
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=600, help="images per timed run")
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs (at least 3)")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument(
        "--variants",
        default="off,on",
        help="comma-separated, from off, metrics, webhooks, on (both); each round rotates their order",
    )
    parser.add_argument(
        "--model",
        choices=("tiny", "base"),
        default="tiny",
        help="tiny: dfscan's own overhead is all there is (the worst case); base: a random ViT-B/16, "
        "what the public checkpoints cost",
    )
    parser.add_argument("--faces", choices=("off", "auto"), default="off", help="DFSCAN_FACES of the worker")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    receiver = Receiver()
    receiver.start()
    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="dfscan-bench-obs-") as tmp_name,
        _service.fresh_postgres_url() as db_url,
        _service.flushed_redis() as broker,
    ):
        tmp = Path(tmp_name)
        upgrade(db_url)
        model = (
            _service.save_tiny_vit(tmp / "tiny")
            if args.model == "tiny"
            else random_vit_base(CORE_CACHE / "vit-base-random")  # bench.core's, its ONNX export cached
        )
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        for pair in range(args.pairs):
            order = variants[pair % len(variants) :] + variants[: pair % len(variants)]
            for variant in order:
                run = one_run(
                    variant, len(runs), tmp, db_url, broker, model, args.images, receiver, args.faces
                )
                log.info(
                    "%s: %.1f img/s, worker CPU %.2f ms/img",
                    variant,
                    run.rate,
                    run.worker_cpu / run.images * 1000,
                )
                runs.append(run)
        off = [r for r in runs if r.variant == "off"]
        on = [r for r in runs if r.variant == variants[-1]]
        rate = min(40.0, 0.5 * statistics.median(r.rate for r in off))
        latency = latency_run(tmp, db_url, broker, model, rate, args.latency_seconds, receiver, args.faces)
    receiver.stop()
    ratio = statistics.median(r.rate for r in on) / statistics.median(r.rate for r in off)
    pair_ratios = [b.rate / a.rate for a, b in zip(off, on, strict=True)]
    sides = {v: [r for r in runs if r.variant == v] for v in variants}
    table = Table(
        title=f"metrics + webhooks vs neither: {len(off)} rounds of {args.images} images, "
        f"{args.model} model, faces {args.faces}"
    )
    for column in (
        "variant",
        "img/s median",
        "spread",
        "worker CPU ms/img",
        "delivery CPU ms/img",
        "machine CPU ms/img",
        "notes",
    ):
        table.add_column(column)
    for name, side in sides.items():
        table.add_row(
            name,
            f"{statistics.median(r.rate for r in side):.2f}",
            spread([r.rate for r in side]),
            f"{statistics.median(r.worker_cpu / r.images * 1000 for r in side):.2f}",
            f"{statistics.median(r.deliverer_cpu / r.images * 1000 for r in side):.2f}",
            f"{statistics.median(r.machine_cpu / r.images * 1000 for r in side):.2f}",
            ""
            if name in ("off", "metrics")
            else f"every event delivered {statistics.median(r.delivered_after or 0 for r in side):.1f}s after the first submit",
        )
    console = Console(width=160)
    console.print(table)
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    for name, side in sides.items():
        if name != "off":
            cost = statistics.median(r.machine_cpu / r.images for r in side) / statistics.median(
                r.machine_cpu / r.images for r in off
            )
            worker = statistics.median(r.worker_cpu / r.images for r in side) / statistics.median(
                r.worker_cpu / r.images for r in off
            )
            console.print(
                f"{name}/off CPU per image: machine {cost:.3f}x, worker {worker:.3f}x (ratio of medians)"
            )
    console.print(
        f"{variants[-1]}/off throughput (ratio of medians) {ratio:.3f} (target >= {TARGET}: {verdict}); per pair "
        + ", ".join(f"{x:.3f}" for x in pair_ratios)
    )
    console.print(
        f"verdict -> webhook at {latency['achieved_rate']:.1f} img/s ({latency['events']:.0f} events): "
        f"p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms, max {latency['max_ms']:.0f} ms; "
        f"submit -> webhook p50 {latency['submit_to_webhook_p50_ms']:.0f} ms, p99 {latency['submit_to_webhook_p99_ms']:.0f} ms"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": [r.__dict__ for r in runs],
                    "ratio": ratio,
                    "pair_ratios": pair_ratios,
                    "latency": latency,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
