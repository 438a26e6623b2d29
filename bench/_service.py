"""The pieces of a whole-system benchmark: a throw-away Postgres database, a flushed Redis database,
benchmark images and checkpoints, and `dfscan worker` subprocesses.

Plain functions (no pytest): ``python -m bench.system`` runs without the test tree.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg2
import redis
from psycopg2 import sql

from bench.images import photo_like

log = logging.getLogger(__name__)

PG_HOST = os.environ.get("DFSCAN_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DFSCAN_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("DFSCAN_BENCH_PG_USER", "postgres")
REDIS_URL = os.environ.get("DFSCAN_BENCH_REDIS", "redis://127.0.0.1:6379")
# Its own Redis database: the benchmark flushes it before and after a run.
REDIS_DB = int(os.environ.get("DFSCAN_BENCH_REDIS_DB", "14"))

REAL_FAKE = {0: "Real", 1: "Fake"}


def _admin() -> psycopg2.extensions.connection:
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return conn


def _drop(name: str, tries: int = 30) -> None:
    """Drop the database, retrying while the server restarts (tests on this machine stop it)."""
    for attempt in range(tries):
        try:
            conn = _admin()
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                    )
                return
            finally:
                conn.close()
        except psycopg2.OperationalError as exc:
            if attempt == tries - 1:
                raise
            log.warning("could not drop %s yet: %s", name, exc)
            time.sleep(2)


@contextmanager
def fresh_postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL to a new, empty PostgreSQL database, dropped when the block exits."""
    name = f"dfscan_bench_{secrets.token_hex(6)}"
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    try:
        yield f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        _drop(name)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# application_name of the benchmark worker's Postgres connections (libpq reads PGAPPNAME), so the CPU of
# the backends serving the worker can be told from the producer's and other users' of the server.
WORKER_APP = "dfscan-bench-worker"


def worker_backends(database_url: str) -> list[int]:
    """The pids of the Postgres backends serving the benchmark worker (``WORKER_APP``)."""
    from sqlalchemy.engine import make_url

    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=make_url(database_url).database, connect_timeout=5
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
                (WORKER_APP,),
            )
            return [int(row[0]) for row in cur.fetchall()]
    finally:
        conn.close()


@dataclass
class MachineCpu:
    """CPU seconds of what serves one worker: the worker process, its Postgres backends (by
    ``WORKER_APP``) and the Redis server (when it is the benchmark's own, ``private_redis``)."""

    worker: float
    postgres: float
    redis: float

    @property
    def total(self) -> float:
        return self.worker + self.postgres + self.redis

    def __sub__(self, other: MachineCpu) -> MachineCpu:
        return MachineCpu(
            self.worker - other.worker, self.postgres - other.postgres, self.redis - other.redis
        )


class CpuMeter:
    """Reads :class:`MachineCpu`; backends that appear later count from zero (their CPU before the
    first reading is connection set-up, small), backends that leave keep their last reading."""

    def __init__(self, worker_pid: int, database_url: str, redis_pid: int | None) -> None:
        self.worker_pid, self.database_url, self.redis_pid = worker_pid, database_url, redis_pid
        self._seen: dict[int, float] = {}

    def read(self) -> MachineCpu:
        for pid in worker_backends(self.database_url):
            self._seen[pid] = max(self._seen.get(pid, 0.0), proc_cpu_seconds(pid))
        return MachineCpu(
            proc_cpu_seconds(self.worker_pid),
            sum(self._seen.values()),
            proc_cpu_seconds(self.redis_pid) if self.redis_pid else 0.0,
        )


@dataclass
class RedisServer:
    url: str
    pid: int | None  # None: a shared server whose CPU is not the benchmark's


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A Redis server of the benchmark's own (``redis-server`` on PATH, a free port on 127.0.0.1, no
    persistence), so its CPU is the benchmark's; else the shared one (``flushed_redis``), pid None."""
    binary = shutil.which("redis-server")
    if binary is None:
        log.warning("redis-server not on PATH: using the shared Redis, whose CPU is not counted")
        with flushed_redis() as url:
            yield RedisServer(url, None)
        return
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="dfscan-bench-redis-") as folder:
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the benchmark's redis-server did not start") from None
                    time.sleep(0.05)
            client.close()
            yield RedisServer(f"redis://127.0.0.1:{port}/0", proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)


@contextmanager
def flushed_redis() -> Iterator[str]:
    """The benchmark's Redis database URL, flushed before and after."""
    url = f"{REDIS_URL}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def write_small_images(folder: Path, n: int, *, size: tuple[int, int], prefix: str, seed: int) -> list[Path]:
    """``n`` photo-like JPEGs of one small ``size`` (bench.images' generator). Each has its own noise,
    so no two share bytes: the worker's sha256 cache must not shortcut a benchmark image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}-{i:05d}.jpg"
        photo_like(size[0], size[1], rng).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def save_tiny_vit(path: Path) -> Path:
    """The tests' tiny random ViT (hidden 32, 2 layers, 32 px): the model costs next to nothing."""
    from tests.fixtures.models import save_tiny_vit as save

    return save(path, REAL_FAKE, image_size=32)


def save_vit_base(path: Path) -> Path:
    """A ViT-B/16-sized random classifier (ViTConfig() defaults, 224 px, Real/Fake), cached at ``path``."""
    if (path / "config.json").exists() and (path / "preprocessor_config.json").exists():
        return path
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    config = ViTConfig(num_labels=2, id2label=dict(REAL_FAKE), label2id={v: k for k, v in REAL_FAKE.items()})  # type: ignore[call-arg]
    path.mkdir(parents=True, exist_ok=True)
    ViTForImageClassification(config).eval().save_pretrained(path)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(path)
    return path


def worker_env(
    database_url: str, broker_url: str, model_dir: Path, images: Path, *, threads: int, batch_size: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSCAN_")}
    env.update(
        {
            "DFSCAN_DATABASE_URL": database_url,
            "DFSCAN_BROKER_URL": broker_url,
            "DFSCAN_MODEL": str(model_dir),
            "DFSCAN_ALLOWED_ROOTS": str(images),
            "DFSCAN_THREADS": str(threads),
            "DFSCAN_BATCH_SIZE": str(batch_size),
            "DFSCAN_BATCH_WAIT_MS": "20",
            "DFSCAN_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "PGAPPNAME": WORKER_APP,
        }
    )
    return env


@dataclass
class WorkerProcess:
    """One `dfscan worker --queues inference` subprocess in its own process group."""

    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_loaded(self, timeout: float = 300.0) -> None:
        """Until Celery is ready (the model loads in the background: a warm-up submission waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if "ready." in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{text[-4000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout:.0f}s:\n{self.text()[-4000:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the worker process so far (all its threads)."""
        return proc_cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL of the group if it does not exit."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start_worker(
    env: dict[str, str], log_path: Path, *, concurrency: int, source: Path | None = None
) -> WorkerProcess:
    """``dfscan worker`` from this tree, or from ``source`` (another checkout: a baseline's code)."""
    if source is not None:
        env = {**env, "PYTHONPATH": str(source)}
    handle = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dfscan.cli.main",
            "worker",
            "--queues",
            "inference",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
        ],
        env=env,
        cwd=source,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return WorkerProcess(proc, log_path)


@contextmanager
def running_worker(
    env: dict[str, str], log_path: Path, *, concurrency: int, source: Path | None = None
) -> Iterator[WorkerProcess]:
    worker = start_worker(env, log_path, concurrency=concurrency, source=source)
    try:
        worker.wait_loaded()
        yield worker
    finally:
        worker.stop()
