"""The pieces of a whole-system benchmark: a throw-away Postgres database, a flushed Redis database,
benchmark images and checkpoints, and `dfscan worker` subprocesses.

Plain functions (no pytest): ``python -m bench.system`` runs without the test tree.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
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
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


def start_worker(env: dict[str, str], log_path: Path, *, concurrency: int) -> WorkerProcess:
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
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return WorkerProcess(proc, log_path)


@contextmanager
def running_worker(env: dict[str, str], log_path: Path, *, concurrency: int) -> Iterator[WorkerProcess]:
    worker = start_worker(env, log_path, concurrency=concurrency)
    try:
        worker.wait_loaded()
        yield worker
    finally:
        worker.stop()
