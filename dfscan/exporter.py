"""`dfscan exporter`: queue metrics from Postgres and Redis, and the number to autoscale on.

Read on each scrape (at most once a second, whatever the number of scrapers), never stored:

- ``dfscan_queue_jobs{lane, state}``: scan jobs queued or running in Postgres (the truth), per lane
  (``inference.interactive``, ``inference``).
- ``dfscan_queue_oldest_job_age_seconds{lane}``: how long the oldest queued job has waited since it
  was last queued (0 when none waits).
- ``dfscan_queue_messages{queue, list}``: messages waiting in each Redis list. Celery's Redis
  transport keeps a priority queue in several lists (``inference``, ``inference\\x06\\x163``, ...);
  each is reported, so a list-length scaler (KEDA ``redis``, kedacore/keda#7066) knows what to read.
- ``dfscan_queue_unacked_messages``: messages delivered to workers and not yet acknowledged.
- ``dfscan_scaling_jobs_outstanding``: **the autoscaling signal**, queued + running inference jobs.
  Divided by what one worker holds at once (its task threads, 2 x DFSCAN_BATCH_SIZE), it is the
  number of workers the load needs; unlike queue depth it is non-zero while workers are merely busy,
  so it holds capacity at a steady load and grows as soon as arrivals outpace the workers, before a
  backlog (and its latency) exists.
- ``dfscan_webhook_deliveries{state}`` (``pending``, ``failed``: what needs attention; delivered
  rows are not counted, so a scrape costs the same at any history) and
  ``dfscan_webhook_oldest_pending_age_seconds``.
- ``dfscan_exporter_source_up{source}``: 1 when Postgres / Redis answered this scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dfscan.queueing import (
    INFERENCE_QUEUE,
    INTERACTIVE_PRIORITY,
    INTERACTIVE_QUEUE,
    PRIORITY_STEPS,
    queue_lists,
)
from dfscan.settings import Settings

log = logging.getLogger(__name__)

LANES = (INTERACTIVE_QUEUE, INFERENCE_QUEUE)
ACTIVE = ("queued", "running")
DELIVERY_STATES = ("pending", "failed")
# Every metric family the exporter serves (the dashboard and the KEDA query are checked against it).
METRICS = (
    "dfscan_queue_jobs",
    "dfscan_queue_oldest_job_age_seconds",
    "dfscan_queue_messages",
    "dfscan_queue_unacked_messages",
    "dfscan_scaling_jobs_outstanding",
    "dfscan_webhook_deliveries",
    "dfscan_webhook_oldest_pending_age_seconds",
    "dfscan_exporter_source_up",
)
_CACHE_SECONDS = 1.0


def priority_lists(queue: str) -> list[tuple[int, str]]:
    """The Redis lists kombu keeps for ``queue``: (step, list name), the plain name for step 0."""
    return list(zip(PRIORITY_STEPS, queue_lists(queue), strict=True))


@dataclass
class Snapshot:
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    oldest_delivery: float = 0.0
    messages: dict[tuple[str, int], int] = field(default_factory=dict)
    unacked: int = 0
    up: dict[str, bool] = field(default_factory=dict)


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then is not None else 0.0


def read_postgres(session: object, snap: Snapshot) -> None:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from db.models import ScanJob, WebhookDelivery, utcnow

    assert isinstance(session, Session)
    now = utcnow()
    interactive = (ScanJob.priority >= INTERACTIVE_PRIORITY).label("interactive")
    rows = session.execute(
        select(interactive, ScanJob.state, func.count(), func.min(ScanJob.updated_at))
        .where(ScanJob.state.in_(ACTIVE))
        .group_by(interactive, ScanJob.state)
    ).all()
    snap.jobs = {(lane, state): 0 for lane in LANES for state in ACTIVE}
    snap.oldest = dict.fromkeys(LANES, 0.0)
    for is_interactive, state, count, oldest in rows:
        lane = INTERACTIVE_QUEUE if is_interactive else INFERENCE_QUEUE
        snap.jobs[(lane, state)] = int(count)
        if state == "queued":
            snap.oldest[lane] = _age(now, oldest)
    # Only what needs attention, each through a partial index: the cost follows the backlog and the
    # given-up rows, never the delivered history (a count of it grew 2 ms -> 156 ms at 300k rows).
    pending, oldest = session.execute(
        select(func.count(), func.min(WebhookDelivery.created_at)).where(WebhookDelivery.state == "pending")
    ).one()
    failed = session.scalar(select(func.count()).where(WebhookDelivery.state == "failed"))
    snap.deliveries = {"pending": int(pending), "failed": int(failed or 0)}
    snap.oldest_delivery = _age(now, oldest)


def read_redis(client: object, snap: Snapshot) -> None:
    import redis

    assert isinstance(client, redis.Redis)
    pipe = client.pipeline()
    names = [(queue, step, name) for queue in LANES for step, name in priority_lists(queue)]
    for _, _, name in names:
        pipe.llen(name)
    pipe.hlen("unacked")
    *lengths, unacked = pipe.execute()
    snap.messages = {(queue, step): int(n) for (queue, step, _), n in zip(names, lengths, strict=True)}
    snap.unacked = int(unacked)


class QueueCollector(Collector):
    """A Prometheus collector that reads the queues on scrape (cached for a second)."""

    def __init__(self, settings: Settings) -> None:
        import redis

        from db.session import new_engine, new_session_factory

        self.sessions = new_session_factory(new_engine(settings.database_url, pool_size=2, max_overflow=2))
        self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
        self._lock = threading.Lock()
        self._at = 0.0
        self._snap = Snapshot()

    def snapshot(self) -> Snapshot:
        with self._lock:
            if time.monotonic() - self._at < _CACHE_SECONDS:
                return self._snap
            snap = Snapshot()
            try:
                with self.sessions() as session:
                    read_postgres(session, snap)
                snap.up["postgres"] = True
            except Exception as exc:  # a scrape must answer; source_up says what is missing
                log.warning("exporter: PostgreSQL unavailable: %s", exc)
                snap.up["postgres"] = False
            try:
                read_redis(self.redis, snap)
                snap.up["redis"] = True
            except Exception as exc:
                log.warning("exporter: Redis unavailable: %s", exc)
                snap.up["redis"] = False
            self._snap, self._at = snap, time.monotonic()
            return snap

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot()
        up = GaugeMetricFamily(
            "dfscan_exporter_source_up", "1 when the source answered this scrape.", labels=["source"]
        )
        for source in ("postgres", "redis"):
            up.add_metric([source], 1.0 if snap.up.get(source) else 0.0)
        yield up
        if snap.up.get("postgres"):
            jobs = GaugeMetricFamily(
                "dfscan_queue_jobs", "Scan jobs queued or running in PostgreSQL.", labels=["lane", "state"]
            )
            for (lane, state), n in sorted(snap.jobs.items()):
                jobs.add_metric([lane, state], n)
            yield jobs
            oldest = GaugeMetricFamily(
                "dfscan_queue_oldest_job_age_seconds",
                "Seconds the oldest queued job has waited since it was last queued (0: none waits).",
                labels=["lane"],
            )
            for lane, age in sorted(snap.oldest.items()):
                oldest.add_metric([lane], age)
            yield oldest
            yield GaugeMetricFamily(
                "dfscan_scaling_jobs_outstanding",
                "The autoscaling signal: inference jobs queued + running. Target per worker: its task threads.",
                value=sum(snap.jobs.values()),
            )
            deliveries = GaugeMetricFamily(
                "dfscan_webhook_deliveries",
                "Webhook deliveries pending or given up (failed), by state.",
                labels=["state"],
            )
            for state, n in sorted(snap.deliveries.items()):
                deliveries.add_metric([state], n)
            yield deliveries
            yield GaugeMetricFamily(
                "dfscan_webhook_oldest_pending_age_seconds",
                "Age of the oldest undelivered webhook event (0: none).",
                value=snap.oldest_delivery,
            )
        if snap.up.get("redis"):
            messages = GaugeMetricFamily(
                "dfscan_queue_messages",
                "Messages waiting per queue and kombu priority step (Redis list <queue> for step 0, "
                "<queue>\\x06\\x16<step> for the others).",
                labels=["queue", "priority"],
            )
            for (queue, step), n in sorted(snap.messages.items()):
                messages.add_metric([queue, str(step)], n)
            yield messages
            yield GaugeMetricFamily(
                "dfscan_queue_unacked_messages",
                "Messages delivered to workers and not yet acknowledged.",
                value=snap.unacked,
            )


def new_registry(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(settings))
    return registry


def serve_forever(settings: Settings, *, port: int | None = None) -> None:
    """Serve the queue metrics until interrupted."""
    chosen = port or settings.fixed("exporter_port")
    start_http_server(chosen, addr=settings.metrics_addr, registry=new_registry(settings))
    log.warning("dfscan exporter serving on http://%s:%d/metrics", settings.metrics_addr, chosen)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return
