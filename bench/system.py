"""Whole-system benchmark: ScanClient.submit -> Redis -> one `dfscan worker` -> Postgres -> done.

``python -m bench.system`` (``make bench-system``) measures, in one run, on a fresh Postgres database
and a flushed Redis database:

- **tiny**: a tiny random ViT (32 px) on small JPEGs, so the model costs almost nothing and the
  figure is the system's own overhead per image (task, claim UPDATE, verdict INSERT, ack, Redis
  round trips). Target: >= 300 img/s for one worker process. Run at each ``--batch-sizes``.
- **vit-b**: a ViT-B/16-sized random model on photo-sized JPEGs through the system, against the
  in-process core (``worker.inference.judge.judge_stream``) on the same images, batch size and threads,
  measured in the same run. Target: >= 0.9x the core.
- **latency**: single-image submissions at a steady rate (half the tiny capacity) for
  ``--latency-seconds``; latency is ``verdicts.created_at - scan_jobs.created_at`` (submit to verdict).

Throughput is images / (first submit -> last job final), after the worker has loaded its model and
finished a warm-up submission.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, text

from bench import _service
from bench.images import write_images
from db.migrate import upgrade
from db.session import new_engine
from dfscan.settings import Settings
from producer.client import ScanClient

log = logging.getLogger(__name__)

TINY_TARGET = 300.0  # img/s per worker process, tiny model
VIT_TARGET = 0.9  # system / in-process core, ViT-B
OUT = Path(__file__).resolve().parent / "out"


@dataclass
class Row:
    name: str
    images: int
    seconds: float
    rate: float  # img/s
    baseline: float | None = None  # img/s of the in-process core
    target: str = ""
    ok: bool | None = None
    notes: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.baseline else self.rate / self.baseline


@dataclass
class Report:
    cores: int
    rows: list[Row] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    submit: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "cores": self.cores,
            "rows": [{**asdict(row), "ratio": row.ratio} for row in self.rows],
            "latency": self.latency,
            "submit": self.submit,
        }


# --- measuring the system --------------------------------------------------------------------------


def final_stats(engine: Engine, submission_ids: Sequence[uuid.UUID]) -> tuple[int, int, int, datetime | None]:
    """(total, final, failed, last finished_at) of the jobs of these submissions."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE state IN ('done', 'failed')), "
                "count(*) FILTER (WHERE state = 'failed'), max(finished_at) "
                "FROM scan_jobs WHERE submission_id = ANY(:ids)"
            ),
            {"ids": list(submission_ids)},
        ).one()
    return int(row[0]), int(row[1]), int(row[2]), row[3]


def wait_final(
    engine: Engine, submission_ids: Sequence[uuid.UUID], expected: int, timeout: float
) -> tuple[int, datetime]:
    """Poll until every job of the submissions is final; returns (failed, last finished_at)."""
    deadline = time.monotonic() + timeout
    while True:
        total, final, failed, last = final_stats(engine, submission_ids)
        if total >= expected and final >= total and last is not None:
            return failed, last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{final} of {expected} jobs final after {timeout:.0f}s")
        time.sleep(0.1)


def timed_batch(
    client: ScanClient, paths: Sequence[Path], timeout: float, worker: _service.WorkerProcess
) -> tuple[float, float, int, float]:
    """Submit ``paths`` in one call; (seconds to submit, seconds first submit -> last final, failed,
    worker CPU seconds meanwhile)."""
    cpu0 = worker.cpu_seconds()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    submission = client.submit([str(p) for p in paths])
    submit_s = time.perf_counter() - t0
    failed, last = wait_final(client.engine, [submission.id], len(paths), timeout)
    return submit_s, (last - started).total_seconds(), failed, worker.cpu_seconds() - cpu0


def warm_up(client: ScanClient, paths: Sequence[Path], timeout: float = 300.0) -> None:
    submission = client.submit([str(p) for p in paths])
    wait_final(client.engine, [submission.id], len(paths), timeout)


def steady_load(
    settings: Settings, paths: Sequence[Path], rate: float, timeout: float
) -> tuple[list[float], float]:
    """One single-image submit every 1/rate s (from a few threads, each with its own client);
    returns (submit->verdict latencies in ms, achieved submit rate)."""
    local = threading.local()

    def submit(path: Path) -> uuid.UUID:
        if not hasattr(local, "client"):
            local.client = ScanClient(settings)
        return local.client.submit([str(path)]).id

    ids: list[uuid.UUID] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        start = time.perf_counter()
        futures = []
        for i, path in enumerate(paths):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(submit, path))
        ids = [f.result() for f in futures]
        achieved = len(paths) / (time.perf_counter() - start)
    engine = new_engine(settings.database_url)
    try:
        wait_final(engine, ids, len(paths), timeout)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT extract(epoch FROM v.created_at - j.created_at) * 1000 "
                    "FROM scan_jobs j JOIN verdicts v ON v.job_id = j.id WHERE j.submission_id = ANY(:ids)"
                ),
                {"ids": ids},
            ).all()
    finally:
        engine.dispose()
    return [float(r[0]) for r in rows], achieved


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# --- measuring the in-process core ----------------------------------------------------------------


def core_rate(
    model_dir: Path, paths: Sequence[Path], warm: Sequence[Path], *, batch: int, threads: int
) -> float:
    """img/s of the in-process judge (``judge_stream``) on ``paths`` (after a warm-up on ``warm``)."""
    from worker.inference.images.decode import ImagePolicy
    from worker.inference.judge import Judge, judge_stream
    from worker.inference.model.classifier import load_classifier
    from worker.inference.sources.read import SourcePolicy

    detector = load_classifier(str(model_dir), device="cpu", threads=threads)
    judge = Judge(
        detector,
        sources=SourcePolicy(allowed_roots=(paths[0].parent,)),
        images=ImagePolicy(),
        batch_size=batch,
    )

    def run(items: Sequence[Path]) -> int:
        results = judge_stream(judge, [str(p) for p in items], threads=max(2, threads))
        return sum(1 for r in results if r.status == "done")

    run(warm)
    t0 = time.perf_counter()
    done = run(paths)
    seconds = time.perf_counter() - t0
    if done != len(paths):
        raise RuntimeError(f"the in-process core scored {done} of {len(paths)} images")
    return len(paths) / seconds


# --- the run ----------------------------------------------------------------------------------------


def client_settings(database_url: str, broker_url: str, per_message: int = 1) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database_url=database_url, broker_url=broker_url, jobs_per_message=per_message, _env_file=None
    )


def bench_tiny(
    report: Report,
    tmp: Path,
    db_url: str,
    broker: str,
    n: int,
    batch_sizes: Sequence[int],
    per_messages: Sequence[int],
    threads: int,
) -> float:
    """Tiny-model runs for each (batch size, jobs per message); returns the best rate with one job per
    message (what single-image submits get), else the best rate."""
    model = _service.save_tiny_vit(tmp / "tiny")
    best: dict[int, float] = {}
    for batch, per_message in ((b, k) for b in batch_sizes for k in per_messages):
        images = tmp / f"tiny-b{batch}-k{per_message}"
        warm = _service.write_small_images(images, 2 * batch, size=(128, 96), prefix="warm", seed=batch)
        paths = _service.write_small_images(
            images, n, size=(128, 96), prefix="img", seed=1000 * per_message + batch
        )
        env = _service.worker_env(db_url, broker, model, images, threads=threads, batch_size=batch)
        env["DFSCAN_JOBS_PER_MESSAGE"] = str(per_message)
        log_path = OUT / f"worker-tiny-b{batch}-k{per_message}.log"
        with _service.running_worker(env, log_path, concurrency=2 * batch) as worker:
            client = ScanClient(client_settings(db_url, broker, per_message))
            warm_up(client, warm)
            submit_s, seconds, failed, cpu = timed_batch(client, paths, 600, worker)
            client.engine.dispose()
        rate = n / seconds
        best[per_message] = max(best.get(per_message, 0.0), rate)
        report.submit[f"tiny-b{batch}-k{per_message}"] = n / submit_s
        report.rows.append(
            Row(
                f"tiny model, batch {batch}, {per_message} job{'s' if per_message > 1 else ''}/message",
                n,
                seconds,
                rate,
                target=f">= {TINY_TARGET:.0f} img/s",
                ok=rate >= TINY_TARGET and failed == 0,
                notes=f"worker CPU {cpu / n * 1000:.1f} ms/img, submit {n / submit_s:.0f} jobs/s"
                + (f", {failed} FAILED" if failed else ""),
            )
        )
        log.info(
            "tiny batch %d, %d jobs/message: %.1f img/s, worker CPU %.2f ms/img",
            batch,
            per_message,
            rate,
            cpu / n * 1000,
        )
    return best.get(1, max(best.values()))


def bench_latency(
    report: Report,
    tmp: Path,
    db_url: str,
    broker: str,
    capacity: float,
    seconds: float,
    batch: int,
    threads: int,
) -> None:
    model = _service.save_tiny_vit(tmp / "tiny")
    rate = max(1.0, capacity * 0.5)
    n = max(10, int(rate * seconds))
    images = tmp / "latency"
    warm = _service.write_small_images(images, 2 * batch, size=(128, 96), prefix="warm", seed=7)
    paths = _service.write_small_images(images, n, size=(128, 96), prefix="img", seed=8)
    env = _service.worker_env(db_url, broker, model, images, threads=threads, batch_size=batch)
    with _service.running_worker(env, OUT / "worker-latency.log", concurrency=2 * batch):
        client = ScanClient(client_settings(db_url, broker))
        warm_up(client, warm)
        client.engine.dispose()
        latencies, achieved = steady_load(client_settings(db_url, broker), paths, rate, timeout=600)
    report.latency = {
        "offered_rate": rate,
        "achieved_submit_rate": achieved,
        "jobs": float(len(latencies)),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "mean_ms": statistics.fmean(latencies),
    }


def bench_vit(report: Report, tmp: Path, db_url: str, broker: str, n: int, batch: int, threads: int) -> None:
    model = _service.save_vit_base(OUT / "vit-b16-random")
    images = tmp / "vit"
    warm = write_images(images / "warm", batch, seed=11)
    paths = write_images(images / "timed", n, seed=12)
    core = core_rate(model, paths, warm, batch=batch, threads=threads)
    log.info("in-process core: %.2f img/s", core)
    env = _service.worker_env(db_url, broker, model, images, threads=threads, batch_size=batch)
    with _service.running_worker(env, OUT / "worker-vit.log", concurrency=2 * batch) as worker:
        client = ScanClient(client_settings(db_url, broker))
        warm_up(client, warm)
        _, seconds, failed, _ = timed_batch(client, paths, 900, worker)
        client.engine.dispose()
    rate = n / seconds
    report.rows.append(
        Row(
            f"ViT-B/16, batch {batch}",
            n,
            seconds,
            rate,
            baseline=core,
            target=f">= {VIT_TARGET}x core",
            ok=rate >= VIT_TARGET * core and failed == 0,
            notes=f"{failed} FAILED" if failed else "",
        )
    )


def render(report: Report, console: Console) -> None:
    table = Table(
        title=f"dfscan whole system: submit -> Redis -> 1 worker -> Postgres ({report.cores} cores)"
    )
    for col in ("run", "images", "seconds", "img/s", "core img/s", "ratio", "target", "result", "notes"):
        table.add_column(
            col, justify="right" if col in ("images", "seconds", "img/s", "core img/s", "ratio") else "left"
        )
    for row in report.rows:
        table.add_row(
            row.name,
            str(row.images),
            f"{row.seconds:.2f}",
            f"{row.rate:.1f}",
            "" if row.baseline is None else f"{row.baseline:.2f}",
            "" if row.ratio is None else f"{row.ratio:.2f}x",
            row.target,
            "" if row.ok is None else ("[green]PASS[/green]" if row.ok else "[red]FAIL[/red]"),
            row.notes,
        )
    if report.latency:
        lat = report.latency
        table.add_row(
            f"latency @ {lat['offered_rate']:.0f} img/s",
            str(int(lat["jobs"])),
            "",
            f"{lat['achieved_submit_rate']:.1f}",
            "",
            "",
            "submit -> verdict",
            "",
            f"p50 {lat['p50_ms']:.0f} ms, p90 {lat['p90_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms",
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.system", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="tiny-model images per batch size")
    parser.add_argument("--vit-images", type=int, default=48, help="ViT-B images (about 3 img/s on 2 cores)")
    parser.add_argument("--batch-sizes", default="16", help="tiny-model worker batch sizes to try")
    parser.add_argument(
        "--jobs-per-message",
        default="1,8",
        help="DFSCAN_JOBS_PER_MESSAGE values to try (1: one Celery task per image; 8: the bulk setting)",
    )
    parser.add_argument("--vit-batch", type=int, default=8, help="ViT-B batch size (worker and core)")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--skip-vit", action="store_true", help="only the tiny-model runs and latency")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (a timeout, CI) unwinds like Ctrl-C, so workers stop and the database is dropped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    threads = os.cpu_count() or 1
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    per_messages = [int(k) for k in args.jobs_per_message.split(",") if k.strip()]
    report = Report(cores=threads)
    with (
        tempfile.TemporaryDirectory(prefix="dfscan-bench-") as tmpdir,
        _service.fresh_postgres_url() as db_url,
        _service.flushed_redis() as broker,
    ):
        tmp = Path(tmpdir)
        upgrade(db_url)
        OUT.mkdir(parents=True, exist_ok=True)
        capacity = bench_tiny(report, tmp, db_url, broker, args.images, batch_sizes, per_messages, threads)
        best_batch = max(batch_sizes)
        if not args.skip_latency:
            bench_latency(
                report, tmp, db_url, broker, capacity, args.latency_seconds, int(best_batch), threads
            )
        if not args.skip_vit:
            bench_vit(report, tmp, db_url, broker, args.vit_images, args.vit_batch, threads)
    render(report, Console(width=max(160, Console().width)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2))
    # The tiny-model target is met when one configuration meets it (the table shows each).
    tiny = [row for row in report.rows if row.name.startswith("tiny model")]
    others = [row for row in report.rows if row not in tiny]
    tiny_ok = not tiny or any(row.ok for row in tiny)
    return 0 if tiny_ok and all(row.ok is not False for row in others) else 1


if __name__ == "__main__":
    raise SystemExit(main())
