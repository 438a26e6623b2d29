"""The Celery app of a dfscan worker process: tasks, remote-control commands and lifecycle signals.

``dfscan worker`` starts it (``-P threads``: tasks share one process, one model and one batcher).
Celery, SQL and the broker live here and in ``worker/tasks.py``; the model itself is the pure core.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from celery.worker.control import control_command

from dfscan.queueing import RELOAD_COMMAND, new_celery_app
from dfscan.settings import get_settings
from worker import metrics
from worker.runtime import InferenceRuntime, WorkerRuntime

log = logging.getLogger(__name__)

app = new_celery_app(get_settings())
app.conf.imports = ("worker.tasks", "worker.training_tasks")

_runtimes: dict[str, WorkerRuntime] = {}
# Why this process must end with status 1 (a sticky device fault): `dfscan worker` exits with it.
fatal: list[str] = []
_fatal_lock = threading.Lock()
_runtime_lock = threading.Lock()
# Set on worker shutdown: stops the sweeper thread of `dfscan worker --sweeper`.
stop_sweeper = threading.Event()


def inference_runtime() -> InferenceRuntime:
    """This process's inference runtime (model, batchers), built on first use (after any fork)."""
    with _runtime_lock:
        rt = _runtimes.get("inference")
        if rt is None:
            rt = _runtimes["inference"] = InferenceRuntime(get_settings())
        assert isinstance(rt, InferenceRuntime)
        return rt


def training_runtime() -> WorkerRuntime:
    """This process's runtime for training tasks: settings and sessions only, no model."""
    with _runtime_lock:
        rt = _runtimes.get("training")
        if rt is None:
            rt = _runtimes["training"] = WorkerRuntime(get_settings())
        return rt


def consumes_inference(consumer: object) -> bool:
    """Whether this worker's consumer (Celery's ``Consumer``) takes inference queues."""
    queues = getattr(getattr(consumer, "task_consumer", None), "queues", None) or []
    return any(queue.name.startswith("inference") for queue in queues)


# Set once the inference worker consumes (its model loaded before Celery started: dfscan/cli/service.py).
_ready = threading.Event()


def health(probe: str) -> tuple[int, str]:
    """The answer to a probe at the metrics port: ``livez`` fails once the process is ending for a
    device fault (it exits 1 on its own; the probe says why meanwhile), ``readyz`` also before the worker
    consumes and while it shuts down."""
    if fatal:
        return 503, fatal[0]
    if probe == "readyz" and not _ready.is_set():
        return 503, "not ready: the worker does not consume yet, or is stopping"
    return 200, "ok"


def fail_process(code: str, message: str) -> None:
    """End this worker with status 1 and one clear line on stderr: a warm shutdown (tasks running
    now finish or give their jobs back; messages not started go back to the queue), then
    ``dfscan worker`` exits 1 so the orchestrator restarts it. Only the first call acts."""
    with _fatal_lock:
        if fatal:
            return
        fatal.append(f"error {code}: the worker cannot serve: {' '.join(message.split())}")
    print(fatal[0], file=sys.stderr, flush=True)
    log.critical("stopping this worker: %s (status 1)", code)
    os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown


@worker_ready.connect
def _warm_up(sender: object = None, **_: object) -> None:
    """Load the model before the first task needs it, off the consumer's thread (sender: the Consumer)."""
    if consumes_inference(sender):
        metrics.serve(get_settings(), health)  # DFSCAN_METRICS_PORT; off when unset
        _ready.set()
        threading.Thread(target=inference_runtime().judge, name="dfscan-warm-up", daemon=True).start()


@worker_shutting_down.connect
def _not_ready(**_: object) -> None:
    """A warm shutdown began: readiness fails at once (no new work is routed here meanwhile)."""
    _ready.clear()


@worker_shutdown.connect
def _drain(**_: object) -> None:
    """Tasks have finished (warm shutdown); run what is left in the batcher, then stop."""
    _ready.clear()
    stop_sweeper.set()
    with _runtime_lock:
        runtimes = list(_runtimes.values())
        _runtimes.clear()
    for rt in runtimes:
        rt.close()


@control_command(name=RELOAD_COMMAND)  # type: ignore[misc]
def reload_model(state: object) -> dict[str, str]:
    """Broadcast by `dfscan models promote`: swap in the promoted version without a restart."""
    if not consumes_inference(getattr(state, "consumer", None)):
        return {"ok": "not an inference worker"}

    def _reload() -> None:
        try:
            inference_runtime().reload()
        except Exception:
            log.exception("reloading the promoted model failed; the current model stays in service")

    threading.Thread(target=_reload, name="dfscan-reload", daemon=True).start()
    return {"ok": "reloading"}
