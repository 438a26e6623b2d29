"""The message contract between producers and workers, and the Celery app both sides share.

This module is light on purpose: the producer imports it, and it imports no torch.

Contract (documented in the README, stable):

- task ``dfscan.scan`` on queue ``inference`` (bulk) or ``inference.interactive`` (the interactive
  lane a bulk backfill cannot starve: workers consume both and kombu rotates between them),
  JSON kwargs ``{"job_id": "<uuid>"}`` from dfscan's own producer, or from a foreign Celery client
  (celery-node, another language) ``{"sources": ["https://...", ...], "client_ref": "..."}`` with the
  per-job options ``"explain": true|false`` and ``"faces": "auto"|"require"|"off"`` if wanted
  (dfscan/options.py); a positional ``[["https://..."]]`` works too. Foreign jobs are written to Postgres
  first. A job's options live on its row, never in a ``job_id`` message: the row is the truth.
- bulk messages carry a Celery priority, the fair-share step of their tenant (:func:`fair_level`):
  kombu's Redis transport keeps one list per step (``inference``, ``inference\\x06\\x161`` ...) and a
  worker's BRPOP empties the lower steps first, so a tenant with nothing waiting goes ahead of another
  tenant's flood. The interactive lane always sends step 0.
- task ``dfscan.train`` on queue ``training``, kwargs ``{"run_id": "<uuid>"}``.
- broadcast ``dfscan_reload_model``: a running inference worker re-reads the promoted model version.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from dfscan.settings import Settings

SCAN_TASK = "dfscan.scan"
TRAIN_TASK = "dfscan.train"
RELOAD_COMMAND = "dfscan_reload_model"

INFERENCE_QUEUE = "inference"
INTERACTIVE_QUEUE = "inference.interactive"
TRAINING_QUEUE = "training"

# Priority at or above this goes to the interactive lane.
INTERACTIVE_PRIORITY = 5

# The priority steps of kombu's Redis transport: one list per step and queue, step 0 taken first.
# Ten steps (kombu's default is four, 0/3/6/9): fair_level's doubling backlog needs them to tell a
# tenant with 3 jobs waiting from one with 300.
PRIORITY_STEPS: tuple[int, ...] = tuple(range(10))
PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep: queue name, separator, step

# What `dfscan worker --queues inference` consumes.
QUEUE_GROUPS: dict[str, tuple[str, ...]] = {
    "inference": (INTERACTIVE_QUEUE, INFERENCE_QUEUE),
    "training": (TRAINING_QUEUE,),
}


def queue_for_priority(priority: int) -> str:
    return INTERACTIVE_QUEUE if priority >= INTERACTIVE_PRIORITY else INFERENCE_QUEUE


def fair_level(ahead: int) -> int:
    """The bulk-lane priority step of a message whose first job has ``ahead`` jobs of its own tenant
    outstanding (queued or running) before it: 0 for a tenant with nothing waiting, one step more each
    time the tenant's backlog doubles (1, 2-3, 4-7, ... 256 and more: 9).

    Workers take step 0 before step 1, and so on, so a tenant's first jobs are never behind another
    tenant's deep backlog: tenant B's 4 jobs wait behind at most the 7 jobs tenant A has at steps 0-3,
    not its 200. Within a step, messages keep their order (FIFO).
    """
    return min(PRIORITY_STEPS[-1], max(0, ahead).bit_length())


# A backlog this deep or deeper is the last step: counting a tenant's jobs past it tells nothing more.
FAIR_SATURATED = 1 << (PRIORITY_STEPS[-1] - 1)


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps for ``queue``, step 0 (the plain name) first."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def expand_queues(names: str) -> list[str]:
    """``"inference,training"`` -> every concrete queue those groups consume."""
    out: list[str] = []
    for name in (part.strip() for part in names.split(",")):
        for queue in QUEUE_GROUPS.get(name, (name,)):
            if queue and queue not in out:
                out.append(queue)
    return out


def new_celery_app(settings: Settings) -> Celery:
    app = Celery("dfscan", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        # kombu's Redis transport, with a race on connection loss closed (see dfscan/broker.py).
        broker_transport="dfscan.broker:Transport",
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,  # Postgres holds the outcome; Celery results would be a second truth
        task_ignore_result=True,
        task_queues=[Queue(INFERENCE_QUEUE), Queue(INTERACTIVE_QUEUE), Queue(TRAINING_QUEUE)],
        task_default_queue=INFERENCE_QUEUE,
        task_routes={SCAN_TASK: {"queue": INFERENCE_QUEUE}, TRAIN_TASK: {"queue": TRAINING_QUEUE}},
        # A message is acked only after its outcome is in Postgres; a killed worker's messages come back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Flower: per-image task events (received/started/succeeded/failed) and sent events, when asked
        # for (DFSCAN_TASK_EVENTS, or Flower's enable_events): each is a Redis publish per message.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        task_track_started=settings.task_events,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a Redis restart must not end the worker
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # kombu looks for expired unacked messages only every interval x throttle seconds.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
            "priority_steps": list(PRIORITY_STEPS),
            "socket_timeout": 15,
            "socket_connect_timeout": 5,
            "health_check_interval": 10,
        },
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
