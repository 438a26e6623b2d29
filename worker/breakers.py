"""The webhook receivers' circuit breakers, shared by every delivery loop of a deployment (in Redis).

A receiver (``scheme://host:port``) that fails ``BREAKER_FAILURES`` attempts in a row is left alone for
``BREAKER_OPEN`` s, doubling each time it opens again up to ``BREAKER_MAX``; then one probe at a time
(half-open) until an attempt succeeds, which closes it. Several loops deliver at once (sweepers,
``worker --sweeper``, ``dfscan webhooks deliver``, a rolling update): if each kept its own breaker, a
receiver that is down would cost ``BREAKER_FAILURES`` attempts and a probe per period *per loop*, and a
loop started later would begin with a closed breaker. So the breaker lives in Redis, one hash per
receiver, changed only by Lua scripts (each failure, success and probe is atomic across loops) and timed
by Redis's clock (the loops' monotonic clocks are their own):

- ``failures`` in a row, ``opened`` (times opened in a row), ``open_until`` and ``probe_until`` (ms of
  Redis time; a probe's hold ends with its outcome, or after the claim lease if its loop died);
- the key expires ``_FORGET_S`` after its last change: an idle receiver is forgotten.

Why Redis and not a table: the breaker is soft state with timers (Redis keys expire on their own, and
losing them costs a few extra attempts, nothing more); every deployment already runs Redis as the
broker; and the outbox rows stay the only thing the delivery transactions write. Keys are named by the
deployment's database (a hash of its URL without credentials), so deployments or test databases that
share a Redis never share breakers.

Where Redis cannot be reached the loop carries on with its own breakers (:class:`LocalBreakers`, the
same rules in memory), logging once a minute; the state it learned meanwhile stays local.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

# Failed attempts in a row that open a breaker, and how long it stays open (doubling each time it
# reopens, up to the max). A receiver that is down costs one probe per period, across all loops.
BREAKER_FAILURES = 3
BREAKER_OPEN = 5.0
BREAKER_MAX = 300.0
# A receiver's breaker is forgotten this long after its last change (twice the longest open period).
_FORGET_S = 2 * BREAKER_MAX
# Seconds between two warnings that Redis cannot be reached.
_WARN_EVERY = 60.0


@dataclass(frozen=True)
class Failure:
    """What one failed attempt did to its receiver's breaker."""

    opened: bool  # this failure opened the breaker
    failures: int  # failed attempts in a row
    open_for: float  # seconds the breaker stays open (0 when closed)


class Breakers(Protocol):
    """The breakers a delivery loop consults (:class:`RedisBreakers` or :class:`LocalBreakers`)."""

    def room(
        self, receivers: Sequence[str], limit: int, in_flight: dict[str, int]
    ) -> tuple[dict[str, int], set[str]]:
        """How many more of each receiver's events this loop may claim now (``limit`` minus its own in
        flight when closed, 0 when open, 1 when half-open and this loop got the probe), and the receivers
        whose probe this loop now holds."""
        ...

    def release_probe(self, receiver: str) -> None:
        """Give back a probe that claimed nothing (another loop took the events)."""
        ...

    def succeeded(self, receiver: str) -> None: ...

    def failed(self, receiver: str) -> Failure: ...


@dataclass
class _State:
    failures: int = 0
    opened: int = 0
    open_until: float = 0.0
    probe_until: float = 0.0


@dataclass
class LocalBreakers:
    """The breakers of one loop, in memory (time.monotonic()): the fallback when Redis is away."""

    probe_lease: float
    states: dict[str, _State] = field(default_factory=dict)

    def room(
        self, receivers: Sequence[str], limit: int, in_flight: dict[str, int]
    ) -> tuple[dict[str, int], set[str]]:
        now = time.monotonic()
        rooms, probes = {}, set()
        for receiver in receivers:
            state = self.states.get(receiver)
            mine = in_flight.get(receiver, 0)
            if state is None or state.failures < BREAKER_FAILURES:
                rooms[receiver] = limit - mine
            elif now < state.open_until or now < state.probe_until or mine:
                rooms[receiver] = 0
            else:
                state.probe_until = now + self.probe_lease
                rooms[receiver] = 1
                probes.add(receiver)
        return rooms, probes

    def release_probe(self, receiver: str) -> None:
        state = self.states.get(receiver)
        if state is not None:
            state.probe_until = 0.0

    def succeeded(self, receiver: str) -> None:
        self.states.pop(receiver, None)

    def failed(self, receiver: str) -> Failure:
        now = time.monotonic()
        state = self.states.setdefault(receiver, _State())
        state.failures += 1
        state.probe_until = 0.0
        if state.failures < BREAKER_FAILURES or now < state.open_until:
            return Failure(False, state.failures, max(0.0, state.open_until - now))
        state.opened += 1
        period = min(BREAKER_MAX, BREAKER_OPEN * 2 ** (state.opened - 1))
        state.open_until = now + period
        return Failure(True, state.failures, period)


# KEYS[1]: the receiver's hash. Every script reads Redis's clock, so all loops share one.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
_FAILED = (
    _NOW
    + """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'probe_until', 0)
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local opened = 0
if failures >= tonumber(ARGV[1]) and now >= open_until then
  local times = redis.call('HINCRBY', KEYS[1], 'opened', 1)
  open_until = now + math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (times - 1))
  redis.call('HSET', KEYS[1], 'open_until', open_until)
  opened = 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {opened, failures, math.max(0, open_until - now)}
"""
)
# Returns per key: -1 closed, 0 open (or probed by someone), 1 this caller holds the probe now.
# ARGV: failures that open, probe lease ms, then 1/0 per key (whether this loop has POSTs in flight there).
_ROOM = (
    _NOW
    + """
local out = {}
for i, key in ipairs(KEYS) do
  local s = redis.call('HMGET', key, 'failures', 'open_until', 'probe_until')
  local failures = tonumber(s[1] or '0')
  if failures < tonumber(ARGV[1]) then
    out[i] = -1
  elseif now < tonumber(s[2] or '0') or now < tonumber(s[3] or '0') or ARGV[i + 2] == '1' then
    out[i] = 0
  else
    redis.call('HSET', key, 'probe_until', now + tonumber(ARGV[2]))
    out[i] = 1
  end
end
return out
"""
)

_RELEASE = "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'probe_until', 0) end"


class RedisBreakers:
    """The breakers in Redis, shared by every loop of the deployment whose database is ``database_url``."""

    def __init__(self, client: redis.Redis, database_url: str, probe_lease: float) -> None:
        self.client = client
        url = make_url(database_url)
        where = f"{url.get_backend_name()}://{url.username or ''}@{url.host or ''}:{url.port or ''}/{url.database}"
        scope = hashlib.sha256(where.encode()).hexdigest()[:12]
        self.prefix = f"dfscan:webhook-breaker:{scope}:"
        self.probe_lease = probe_lease
        self.local = LocalBreakers(probe_lease)  # used while Redis cannot be reached
        self._failed = client.register_script(_FAILED)
        self._room = client.register_script(_ROOM)
        self._release = client.register_script(_RELEASE)
        self._warned_at = -_WARN_EVERY

    def key(self, receiver: str) -> str:
        return self.prefix + receiver

    def _unreachable(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(
                "webhook breakers: Redis cannot be reached (%s); this loop keeps its own meanwhile", exc
            )

    def room(
        self, receivers: Sequence[str], limit: int, in_flight: dict[str, int]
    ) -> tuple[dict[str, int], set[str]]:
        if not receivers:
            return {}, set()
        flags = ["1" if in_flight.get(r, 0) else "0" for r in receivers]
        try:
            states = self._room(
                keys=[self.key(r) for r in receivers],
                args=[BREAKER_FAILURES, int(self.probe_lease * 1000), *flags],
            )
        except (redis.RedisError, OSError) as exc:
            self._unreachable(exc)
            return self.local.room(receivers, limit, in_flight)
        rooms = {
            r: (limit - in_flight.get(r, 0)) if int(s) < 0 else int(s)
            for r, s in zip(receivers, states, strict=True)
        }
        return rooms, {r for r, s in zip(receivers, states, strict=True) if int(s) == 1}

    def release_probe(self, receiver: str) -> None:
        self.local.release_probe(receiver)
        try:
            self._release(keys=[self.key(receiver)])
        except (redis.RedisError, OSError) as exc:
            self._unreachable(exc)  # the hold ends with the probe lease

    def succeeded(self, receiver: str) -> None:
        self.local.succeeded(receiver)
        try:
            self.client.delete(self.key(receiver))
        except (redis.RedisError, OSError) as exc:
            self._unreachable(exc)

    def failed(self, receiver: str) -> Failure:
        local = self.local.failed(receiver)
        try:
            opened, failures, open_ms = self._failed(
                keys=[self.key(receiver)],
                args=[
                    BREAKER_FAILURES,
                    int(BREAKER_OPEN * 1000),
                    int(BREAKER_MAX * 1000),
                    int(_FORGET_S * 1000),
                ],
            )
        except (redis.RedisError, OSError) as exc:
            self._unreachable(exc)
            return local
        return Failure(bool(opened), int(failures), int(open_ms) / 1000)


def shared_breakers(broker_url: str, database_url: str, probe_lease: float) -> RedisBreakers:
    """The deployment's breakers in the broker's Redis (short timeouts: a step never hangs on it)."""
    client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    return RedisBreakers(client, database_url, probe_lease)
