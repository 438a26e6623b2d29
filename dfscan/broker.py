"""kombu's Redis transport with one race closed and a cap per queue on the messages a worker holds.

**The race.** When Redis goes away while a worker holds unacknowledged messages, Celery closes the broker
connection and kombu's channel tries to put those messages back (``restore_unacked_once``). If the
connection object was already released, kombu 5.7 dereferences ``None`` and raises AttributeError;
Celery reports "Unrecoverable error" and the worker stops consuming for good (seen in our Redis
restart scenario). Here that case raises a connection error instead, which kombu's close path
ignores as it should: the messages come back after the visibility timeout, and the sweeper
re-sends their jobs from Postgres in any case.

**Reserved task threads.** A worker's prefetch (its task threads) is shared by every queue it consumes,
and kombu takes whichever message is next, so a bulk backlog could hold every thread and an interactive
message would wait for a bulk job to end. :func:`limit_queue` caps the messages of one queue that a
consuming process holds (delivered, not yet acked): at the cap, the channel stops asking Redis for that
queue (its BRPOP names only the others) until one is acked, so the threads beyond the cap only ever take
the other queues' messages. A message held for a later ETA (a retry's countdown) does not count until
it is due, as Celery raises the prefetch for it; a copy redelivered past the visibility timeout counts
until it is acked, apart from its first copy. ``dfscan worker`` sets the cap (dfscan/cli/service.py);
a producer never consumes, so the cap never applies to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

# queue -> most of its messages one consuming process holds at once (set by `dfscan worker`).
_limits: dict[str, int] = {}
_limits_lock = threading.Lock()

# Seconds a BRPOP waits while a queue is held back at its cap: how soon a freed place is taken again
# (kombu's default, 1 s, would leave a bulk thread idle for up to that long after each job).
_HELD_BACK_POLL = 0.1


def limit_queue(queue: str, most: int) -> None:
    """In this process, hold at most ``most`` unacked messages of ``queue`` at a time."""
    if most < 1:
        raise ValueError(f"most must be >= 1, got {most}")
    with _limits_lock:
        _limits[queue] = most


def queue_limits() -> dict[str, int]:
    with _limits_lock:
        return dict(_limits)


def _due(raw_message: dict[str, Any]) -> float:
    """When a delivered message starts to need a thread: now, or its ETA (Celery's ``eta`` header)."""
    eta = (raw_message.get("headers") or {}).get("eta")
    if not isinstance(eta, str):
        return 0.0
    try:
        return datetime.fromisoformat(eta).timestamp()
    except ValueError:
        return 0.0


class _CappedCycle:
    """The channel's queue cycle, leaving out the queues held back at their cap."""

    def __init__(self, inner: Any, full: Callable[[str], bool]) -> None:
        self._inner = inner
        self._full = full

    def update(self, queues: Iterable[str]) -> None:
        self._inner.update(queues)

    def rotate(self, last_used: str) -> Any:
        return self._inner.rotate(last_used)

    def consume(self, n: int) -> list[str]:
        return [queue for queue in self._inner.consume(n) if not self._full(queue)]


class Channel(kombu_redis.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Deliveries of the capped queues not yet acked or rejected: delivery tag -> (queue, when each
        # delivery holds a thread). Counted per delivery, not per tag: a message redelivered past the
        # visibility timeout while its first copy still runs has the same tag, and the copy's ack (it
        # finds its job claimed and skips) must not free the place the first copy still holds.
        self._in_flight: dict[str, list[tuple[str, float]]] = {}
        self._in_flight_lock = threading.Lock()  # acks come from the task threads
        self._queue_cycle = _CappedCycle(self._queue_cycle, self._at_cap)

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was already released")
        return super()._connparams(asynchronous=asynchronous)

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any) -> Any:
        result = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if queue in queue_limits() and not no_ack:
            deliver = self.connection._callbacks[queue]

            def counted(raw_message: dict[str, Any]) -> Any:
                tag = raw_message["properties"]["delivery_tag"]
                with self._in_flight_lock:
                    self._in_flight.setdefault(tag, []).append((queue, _due(raw_message)))
                return deliver(raw_message)

            self.connection._callbacks[queue] = counted
        return result

    def _settled(self, delivery_tag: str) -> None:
        with self._in_flight_lock:
            copies = self._in_flight.get(delivery_tag)
            if copies:
                copies.pop(0)
                if not copies:
                    del self._in_flight[delivery_tag]

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        self._settled(delivery_tag)
        super().basic_ack(delivery_tag, multiple)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._settled(delivery_tag)
        super().basic_reject(delivery_tag, requeue)

    def in_flight(self, queue: str) -> int:
        """Deliveries of ``queue`` this channel holds that need a thread now (due, not acked)."""
        now = time.time()
        with self._in_flight_lock:
            return sum(
                1 for copies in self._in_flight.values() for q, due in copies if q == queue and due <= now
            )

    def _at_cap(self, queue: str) -> bool:
        most = queue_limits().get(queue)
        return most is not None and self.in_flight(queue) >= most

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None and any(self._at_cap(queue) for queue in queue_limits()):
            timeout = _HELD_BACK_POLL
        super()._brpop_start(timeout)


class Transport(kombu_redis.Transport):
    Channel = Channel
