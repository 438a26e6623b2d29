"""Process launchers behind `dfscan worker`, `dfscan sweeper` and `dfscan flower`."""

from __future__ import annotations

import logging
import os
import socket
import threading

from dfscan.broker import limit_queue
from dfscan.queueing import INFERENCE_QUEUE, INTERACTIVE_QUEUE, expand_queues
from dfscan.settings import Settings

log = logging.getLogger(__name__)


def interactive_threads(threads: int) -> int:
    """Task threads kept for the interactive lane beside ``threads`` for both lanes: a quarter, at
    least one (16 -> 4). Interactive traffic is the small part; each of its jobs also goes first at
    the model, the face detector and the decode children, so a few threads carry it."""
    return max(1, threads // 4)


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
    if INTERACTIVE_QUEUE in concrete and INFERENCE_QUEUE in concrete:
        # Bulk messages hold at most `threads` task threads; the reserved ones only ever run interactive
        # messages, so a bulk backlog never makes an interactive image wait for a thread (dfscan/broker.py).
        reserved = interactive_threads(threads)
        limit_queue(INFERENCE_QUEUE, threads)
        log.info(
            "%d task threads for both lanes, %d more reserved for the interactive lane", threads, reserved
        )
        threads += reserved
    if "training" in concrete and not training_only:
        log.warning("one process serves inference and training: a training run will slow inference")
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
