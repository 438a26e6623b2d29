"""CPU per image outside the model: one worker fed single-image messages, against a baseline checkout.

``python -m bench.feed_cpu --baseline main`` runs, alternating A (the baseline ref's code, exported
with ``git archive``) and B (this tree) for ``--pairs`` pairs, each run on a fresh Postgres database
and a Redis server of its own:

- a ``dfscan worker`` with the tiny random ViT (32 px, the model costs next to nothing), default
  settings except ``DFSCAN_FACES`` (``--faces``, default off) and the benchmark's paths;
- ``--images`` small JPEGs (128x96, each with its own bytes: no cache hits), one job per message,
  submitted in one call after a warm-up;
- CPU seconds per image of the worker process, of the Postgres backends serving it (by
  ``application_name``) and of the Redis server, read from ``/proc`` before and after; throughput is
  images / (first submit -> last job final).

With ``--profile`` (py-spy on PATH) one more B run is sampled and the worker's CPU split into stages
(Celery message, claim, cache look-up, fetch/read, decode + preprocess, model, verdict write, ack,
metrics, leases) by the frames its busy samples are in; Postgres and Redis come from ``/proc``.
Medians, spread (min-max) and B/A ratios are printed and written to ``bench/out/feed_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import _service
from bench.system import OUT, client_settings, wait_final, warm_up
from db.migrate import upgrade
from dfscan.queueing import expand_queues
from producer.client import ScanClient

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
TARGET_MS = 3.0  # machine CPU per image outside the model
TARGET_RATE = 300.0  # img/s, one worker process


@dataclass
class Run:
    variant: str  # "A" (baseline) or "B" (this tree)
    images: int
    seconds: float
    worker_ms: float  # CPU per image
    postgres_ms: float
    redis_ms: float
    failed: int

    @property
    def machine_ms(self) -> float:
        return self.worker_ms + self.postgres_ms + self.redis_ms

    @property
    def rate(self) -> float:
        return self.images / self.seconds


@contextmanager
def exported(ref: str) -> Iterator[Path]:
    """The tree of git ``ref`` in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="dfscan-bench-ref-") as folder:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
        yield Path(folder)


def one_run(
    variant: str,
    tmp: Path,
    model: Path,
    n: int,
    *,
    faces: str,
    batch: int,
    priority: int,
    source: Path | None,
    seed: int,
    profile: Path | None = None,
) -> Run:
    images = tmp / f"images-{variant}-{seed}"
    warm = _service.write_small_images(images, 2 * batch, size=(128, 96), prefix="warm", seed=seed)
    paths = _service.write_small_images(images, n, size=(128, 96), prefix="img", seed=seed + 1)
    with _service.fresh_postgres_url() as db_url, _service.private_redis() as redis:
        upgrade(db_url)
        env = _service.worker_env(
            db_url, redis.url, model, images, threads=os.cpu_count() or 1, batch_size=batch
        )
        env["DFSCAN_FACES"] = faces
        env["DFSCAN_JOBS_PER_MESSAGE"] = "1"
        log_path = OUT / f"worker-feed-{variant}.log"
        with _service.running_worker(env, log_path, concurrency=2 * batch, source=source) as worker:
            client = ScanClient(client_settings(db_url, redis.url, 1))
            try:
                warm_up(client, warm)
                # The backlog is queued while the worker consumes nothing, so the producer's speed (and
                # CPU) is not measured: the worker then drains n single-image messages.
                _consume(client, False)
                submission = client.submit([str(p) for p in paths], priority=priority)
                meter = _service.CpuMeter(worker.proc.pid, db_url, redis.pid)
                spy = _py_spy(worker.proc.pid, profile) if profile else None
                before = meter.read()
                started = datetime.now(UTC)
                _consume(client, True)
                failed, last = wait_final(client.engine, [submission.id], n, 600)
                used = meter.read() - before
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
            finally:
                client.engine.dispose()
    shutil.rmtree(images, ignore_errors=True)
    return Run(
        variant,
        n,
        (last - started).total_seconds(),
        used.worker / n * 1000,
        used.postgres / n * 1000,
        used.redis / n * 1000,
        failed,
    )


def _consume(client: ScanClient, on: bool) -> None:
    """Start or stop the worker's consumers of both inference queues (Celery remote control)."""
    for queue in expand_queues("inference"):
        if on:
            replies = client.app.control.add_consumer(queue, reply=True, timeout=10)
        else:
            replies = client.app.control.cancel_consumer(queue, reply=True, timeout=10)
        if not replies:
            raise RuntimeError(f"the worker did not answer {'add' if on else 'cancel'}_consumer {queue}")


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-f",
            "raw",
            "-r",
            "200",
            "-o",
            str(out),
            "--threads",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the first message
    return proc


# --- the stage breakdown from py-spy's collapsed stacks ----------------------------------------------

# Leaf frames where a thread waits (py-spy's idle detection misses some): not CPU.
_WAITS = (
    "Condition.wait",
    "Event.wait",
    "_worker (concurrent/futures/thread.py:81)",
    "_epoll.poll",
    "select (",
    "poll (",
    "Queue.get",
    "sleep",
    "_read_from_socket",
    "recv",
)
# A sample belongs to the first stage (in this order) any of its frames is in.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "metrics",
        ("prometheus_client/", "observe_claims", "observe_outcomes", "count_settled", "model_batch ("),
    ),
    ("leases", ("worker/leases.py",)),
    ("claim", ("InferenceRuntime.claim", "claim_jobs")),
    ("cache lookup", ("_lookup_batch", "InferenceRuntime.known", "cached_verdicts")),
    ("verdict write", ("InferenceRuntime.finish", "finish_done_many", "record_batch")),
    ("model", ("MicroBatcher._run_batch", "DynamicBatcher", "Classifier.predict", "forward (")),
    ("decode + preprocess", ("preprocess", "images/decode", "decode_pool", "PIL/")),
    ("fetch/read", ("sources/read", "sources/media", "hashlib", "read_source")),
    ("ack", ("basic_ack", "Request.acknowledge", ".ack (", "acknowledge")),
    ("database (other)", ("sqlalchemy/", "psycopg2")),
    ("task body", ("worker/tasks.py", "worker/runtime.py", "worker/messages.py")),
    ("Celery message", ("celery/", "kombu/", "redis/", "billiard/", "vine/")),
)


def breakdown(raw: Path) -> dict[str, float]:
    """Share of the worker's busy samples per stage (sums to 1)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")[1:]
        if not frames or any(frames[-1].startswith(w) or w in frames[-1] for w in _WAITS):
            continue
        counts[_stage(frames)] += int(n)
    total = sum(counts.values()) or 1
    return {stage: count / total for stage, count in counts.most_common()}


def _stage(frames: Sequence[str]) -> str:
    for stage, marks in STAGES:
        if any(mark in frame for frame in frames for mark in marks):
            return stage
    return "other"


# --- the report --------------------------------------------------------------------------------------


def summary(runs: Sequence[Run], field: str) -> tuple[float, float, float]:
    values = [getattr(run, field) for run in runs]
    return statistics.median(values), min(values), max(values)


def render(runs: Sequence[Run], stages: dict[str, float], profiled: Run | None, faces: str, lane: str) -> str:
    lines = [
        f"CPU per image outside the model, tiny ViT, 1 job/message, {lane} lane, faces {faces}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        f"{'':18}{'A median':>10}{'(min-max)':>16}{'B median':>10}{'(min-max)':>16}{'B/A':>7}",
    ]
    fields = (
        ("machine ms/img", "machine_ms"),
        ("worker ms/img", "worker_ms"),
        ("postgres ms/img", "postgres_ms"),
        ("redis ms/img", "redis_ms"),
        ("img/s", "rate"),
    )
    a = [r for r in runs if r.variant == "A"]
    b = [r for r in runs if r.variant == "B"]
    for name, field in fields:
        row = f"{name:18}"
        for group in (a, b):
            if group:
                med, lo, hi = summary(group, field)
                row += f"{med:10.2f}{f'({lo:.2f}-{hi:.2f})':>16}"
            else:
                row += f"{'':10}{'':16}"
        if a and b:
            row += f"{summary(b, field)[0] / summary(a, field)[0]:7.2f}"
        lines.append(row)
    if b:
        machine, rate = summary(b, "machine_ms")[0], summary(b, "rate")[0]
        lines.append(
            f"target: machine CPU <= {TARGET_MS:.0f} ms/img: {'PASS' if machine <= TARGET_MS else 'FAIL'} "
            f"({machine:.2f}); one worker >= {TARGET_RATE:.0f} img/s: {'PASS' if rate >= TARGET_RATE else 'FAIL'} "
            f"({rate:.0f})"
        )
    if stages and profiled is not None:
        lines.append(f"B stage breakdown (py-spy, worker {profiled.worker_ms:.2f} ms/img under the sampler):")
        for stage, share in stages.items():
            lines.append(f"  {stage:18}{share * profiled.worker_ms:7.2f} ms  {share:6.1%}")
        lines.append(f"  {'postgres (/proc)':18}{profiled.postgres_ms:7.2f} ms")
        lines.append(f"  {'redis (/proc)':18}{profiled.redis_ms:7.2f} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--baseline", default="main", help="git ref for A; 'none' runs B only")
    parser.add_argument("--faces", default="off", choices=("off", "auto", "require"))
    parser.add_argument("--batch", type=int, default=8, help="DFSCAN_BATCH_SIZE (the default)")
    parser.add_argument(
        "--lane",
        default="interactive",
        choices=("interactive", "bulk"),
        help="the lane of the images (interactive: single images, batched on a CPU too)",
    )
    parser.add_argument("--profile", action="store_true", help="one more B run under py-spy: stages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    OUT.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    stages: dict[str, float] = {}
    profiled = None
    with (
        tempfile.TemporaryDirectory(prefix="dfscan-bench-") as tmpdir,
        contextmanager_or_none(args.baseline) as ref,
    ):
        tmp = Path(tmpdir)
        model = _service.save_tiny_vit(tmp / "tiny")
        common = {
            "faces": args.faces,
            "batch": args.batch,
            "priority": 5 if args.lane == "interactive" else 0,
        }
        for pair in range(args.pairs):
            for variant, source in (("A", ref), ("B", None)):
                if variant == "A" and ref is None:
                    continue
                run = one_run(
                    variant, tmp, model, args.images, source=source, seed=100 * pair + ord(variant), **common
                )
                log.info("%s: %s", variant, run)
                runs.append(run)
        if args.profile:
            raw = OUT / "feed_cpu_profile.txt"
            profiled = one_run("B", tmp, model, args.images, source=None, seed=999, profile=raw, **common)
            stages = breakdown(raw)
    text = render(runs, stages, profiled, args.faces, args.lane)
    print(text)
    (OUT / "feed_cpu.json").write_text(
        json.dumps(
            {
                "runs": [{**asdict(r), "machine_ms": r.machine_ms, "rate": r.rate} for r in runs],
                "stages": stages,
                "profiled": None if profiled is None else asdict(profiled),
                "loadavg": os.getloadavg(),
            },
            indent=2,
        )
    )
    return 0 if all(r.failed == 0 for r in runs) else 1


@contextmanager
def contextmanager_or_none(ref: str) -> Iterator[Path | None]:
    if ref == "none":
        yield None
        return
    with exported(ref) as folder:
        yield folder


if __name__ == "__main__":
    raise SystemExit(main())
