"""The Redis transport's close path after a lost connection (dfscan/broker.py)."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from dfscan.broker import Transport
from dfscan.queueing import new_celery_app
from dfscan.settings import Settings
from tests.fixtures.service import REDIS_DB, REDIS_URL


def test_a_channel_closed_after_its_connection_was_released_does_not_crash_the_consumer() -> None:
    app = new_celery_app(Settings(broker_url=f"{REDIS_URL}/{REDIS_DB}", _env_file=None))  # type: ignore[call-arg]
    conn = app.connection_for_write()
    assert isinstance(conn.transport, Transport)
    channel = conn.default_channel
    channel.basic_qos(0, 4, False)  # a QoS with unacked bookkeeping, as a consumer has
    channel._disconnect_pools()  # what a lost connection does ...
    conn.transport.client = None  # ... and what releasing the connection does, in the racy order
    with pytest.raises(RedisConnectionError, match="already released"):
        channel._connparams()
    conn.maybe_close_channel(channel)  # kombu ignores connection errors here; it used to hit AttributeError
