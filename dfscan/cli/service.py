"""Process launchers behind `dfscan worker`, `dfscan sweeper` and `dfscan flower`."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading

from dfscan.queueing import expand_queues
from dfscan.settings import Settings

log = logging.getLogger(__name__)


def run_worker(
    settings: Settings,
    *,
    queues: str,
    concurrency: int | None,
    sweeper: bool,
    name: str | None,
    loglevel: str,
) -> None:
    """Start a Celery worker consuming ``queues`` (groups: inference, training).

    Inference runs on the threads pool: tasks (one image each) fetch and decode in parallel and
    share one model behind the dynamic batcher; CUDA is initialised in this process only, and no
    fork follows it. Training runs one run at a time (concurrency 1) in its own worker process.
    """
    from worker.app import app

    concrete = expand_queues(queues)
    training_only = all(queue == "training" for queue in concrete)
    threads = concurrency or (1 if training_only else max(4, 2 * settings.batch_size))
    if "training" in concrete and not training_only:
        log.warning("one process serves inference and training: a training run will slow inference")
    if any(queue.startswith("inference") for queue in concrete):
        _load_model_or_exit()  # before the sweeper, before Celery: a worker that cannot judge takes nothing
    if sweeper:
        from db.session import new_engine, new_session_factory
        from worker.app import stop_sweeper
        from worker.delivery import start_delivery_thread
        from worker.sweeper import run_sweeper

        sessions = new_session_factory(new_engine(settings.database_url))
        thread = threading.Thread(
            target=run_sweeper,
            args=(app, sessions, settings, stop_sweeper),
            name="dfscan-sweeper",
            daemon=True,
        )
        thread.start()
        start_delivery_thread(sessions, settings, stop_sweeper)  # webhooks ride with the sweeper
    node = name or f"dfscan-{'+'.join(queues.split(','))}@{socket.gethostname()}-{os.getpid()}"
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={threads}",
            f"--queues={','.join(concrete)}",
            f"--hostname={node}",
            f"--loglevel={loglevel}",
            "--task-events",
            "--without-mingle",
            "--without-gossip",
        ]
    )


def _load_model_or_exit() -> None:
    """Load the serving model and its face detector now, in this (only) process, before any job is taken.

    A worker whose model or face detector cannot load exits with status 1 and one line on stderr
    (``error MODEL_LOAD_FAILED: ...``) instead of reporting ready and failing every job it takes.
    Orchestrators see the exit and restart it or report it.
    """
    from dfscan.exceptions import DfscanError
    from worker.app import inference_runtime

    try:
        inference_runtime().judge()
    except DfscanError as exc:
        message = " ".join(str(exc).split())  # one line, even when a library's message has several
        print(f"error {exc.code}: the worker cannot serve: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def run_sweeper_process(settings: Settings, *, once: bool) -> None:
    from db.session import new_engine, new_session_factory
    from dfscan.queueing import new_celery_app
    from worker.sweeper import run_sweeper, sweep_once

    app = new_celery_app(settings)
    sessions = new_session_factory(new_engine(settings.database_url))
    if once:
        report = sweep_once(app, sessions, settings)
        print(f"relayed={report.relayed} resent={report.resent} failed={report.failed}")
        return
    from worker.delivery import start_delivery_thread

    stop = threading.Event()
    start_delivery_thread(sessions, settings, stop)  # webhooks ride with the sweeper
    try:
        run_sweeper(app, sessions, settings, stop)
    except KeyboardInterrupt:
        stop.set()


def run_flower(settings: Settings, *, port: int | None, address: str | None = None) -> None:
    """Flower with basic auth on every path, on loopback by default (see dfscan/cli/flower.py)."""
    from dfscan.cli.flower import run_flower as run

    run(settings, port=port, address=address)
