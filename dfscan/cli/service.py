"""Process launchers behind `dfscan worker`, `dfscan sweeper` and `dfscan flower`."""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

from dfscan.broker import limit_queue
from dfscan.queueing import INFERENCE_QUEUE, INTERACTIVE_QUEUE, expand_queues
from dfscan.settings import Settings

log = logging.getLogger(__name__)


# glibc malloc settings a worker runs with unless the environment names its own (docker/Dockerfile.* set
# the same). Why: a worker frees decoded images of tens of MB from many threads; with glibc's defaults
# (up to 8 arenas per core, an mmap threshold that rises to 32 MiB after the first large free) that
# memory stays in the arenas, and 16 ordinary 40 Mpx JPEGs left a worker at 3.5-3.8 GiB instead of
# under 1 GiB (issue 17). 2 arenas and a fixed 128 KiB threshold hand large buffers back to the kernel
# as soon as they are freed. Figures: /work/notes/lanes-docs.md, "Memory".
ALLOCATOR_DEFAULTS = {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 128 * 1024}
_MALLOPT_PARAMS = {"MALLOC_ARENA_MAX": -8, "MALLOC_MMAP_THRESHOLD_": -3}  # M_ARENA_MAX, M_MMAP_THRESHOLD


def tune_allocator(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Apply :data:`ALLOCATOR_DEFAULTS` to this process (``mallopt``, before the worker's threads and model
    exist) and to ``environ``, which its decode children inherit. Nothing is changed when the environment
    sets either variable (the operator's choice, e.g. ``MALLOC_ARENA_MAX=16`` for glibc's own behaviour)
    or the C library is not glibc. True when applied."""
    if any(name in environ for name in ALLOCATOR_DEFAULTS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator has no such settings
        return False
    for name, value in ALLOCATOR_DEFAULTS.items():
        if mallopt(_MALLOPT_PARAMS[name], value) != 1:
            log.warning("mallopt(%s=%d) failed; the allocator keeps its defaults", name, value)
            return False
        environ[name] = str(value)
    return True


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
    tune_allocator()  # before worker.app imports torch and the task threads start
    concrete = expand_queues(queues)
    training_only = all(queue == "training" for queue in concrete)
    if not training_only:
        settings = hardware_defaults(settings)
    from worker.app import app

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
    try:
        _celery_worker(app, threads, concrete, node, loglevel, settings.task_events)
    finally:
        from worker.app import fatal

        if fatal:  # a sticky device fault ended the worker: say so in the exit status
            raise SystemExit(1)


def _celery_worker(
    app: Any, threads: int, queues: list[str], node: str, loglevel: str, task_events: bool
) -> None:
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={threads}",
            f"--queues={','.join(queues)}",
            f"--hostname={node}",
            f"--loglevel={loglevel}",
            *(["--task-events"] if task_events else []),
            "--without-mingle",
            "--without-gossip",
        ]
    )


def hardware_defaults(settings: Settings, environ: MutableMapping[str, str] = os.environ) -> Settings:
    """``settings`` with the serving defaults of the hardware found (on a CUDA GPU: batch size 64-256 by
    its memory, 2 torch threads; :mod:`worker.inference.hardware`) for each the operator left unset.

    They are written to ``environ`` as ``DFSCAN_*`` and the process's settings re-read, so every reader
    of :func:`~dfscan.settings.get_settings` in this process (the runtime, the task threads' count, the
    database pool) sees the same values. A setting given in the environment or ``.env`` always wins.
    """
    from dfscan.settings import get_settings
    from worker.inference.hardware import probe, serving_defaults

    hardware = probe(settings.device)
    chosen = {
        name: value
        for name, value in serving_defaults(hardware).items()
        if name not in settings.model_fields_set
    }
    if not chosen:
        return settings
    for name, value in chosen.items():
        environ[f"DFSCAN_{name.upper()}"] = str(value)
    log.info(
        "%s (%.0f GiB, compute capability %d.%d): %s",
        hardware.name,
        hardware.memory_gib,
        *hardware.capability,
        ", ".join(f"DFSCAN_{name.upper()}={value}" for name, value in chosen.items()),
    )
    get_settings.cache_clear()
    return get_settings()


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
