"""The Celery app of a dfscan worker process: tasks, remote-control commands and lifecycle signals.

``dfscan worker`` starts it (``-P threads``: tasks share one process, one model and one batcher).
Celery, SQL and the broker live here and in ``worker/tasks.py``; the model itself is the pure core.
"""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown
from celery.worker.control import control_command

from dfscan.queueing import RELOAD_COMMAND, new_celery_app
from dfscan.settings import get_settings
from worker import metrics
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

app = new_celery_app(get_settings())
app.conf.imports = ("worker.tasks", "worker.training_tasks")

_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()
_stop_sweeper = threading.Event()


def runtime() -> WorkerRuntime:
    """This process's runtime, built on first use (after any fork, never before)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = WorkerRuntime(get_settings())
        return _runtime


def consumes_inference(consumer: object) -> bool:
    """Whether this worker's consumer (Celery's ``Consumer``) takes inference queues."""
    queues = getattr(getattr(consumer, "task_consumer", None), "queues", None) or []
    return any(queue.name.startswith("inference") for queue in queues)


@worker_ready.connect
def _warm_up(sender: object = None, **_: object) -> None:
    """Load the model before the first task needs it, off the consumer's thread (sender: the Consumer)."""
    if consumes_inference(sender):
        metrics.serve(get_settings())  # DFSCAN_METRICS_PORT; off when unset
        threading.Thread(target=runtime().lane, name="dfscan-warm-up", daemon=True).start()


@worker_shutdown.connect
def _drain(**_: object) -> None:
    """Tasks have finished (warm shutdown); run what is left in the batcher, then stop."""
    _stop_sweeper.set()
    if _runtime is not None:
        _runtime.close()


@control_command(name=RELOAD_COMMAND)  # type: ignore[misc]
def reload_model(state: object) -> dict[str, str]:
    """Broadcast by `dfscan models promote`: swap in the promoted version without a restart."""
    if not consumes_inference(getattr(state, "consumer", None)):
        return {"ok": "not an inference worker"}

    def _reload() -> None:
        try:
            runtime().reload()
        except Exception:
            log.exception("reloading the promoted model failed; the current model stays in service")

    threading.Thread(target=_reload, name="dfscan-reload", daemon=True).start()
    return {"ok": "reloading"}
