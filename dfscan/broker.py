"""kombu's Redis transport with one race closed.

When Redis goes away while a worker holds unacknowledged messages, Celery closes the broker
connection and kombu's channel tries to put those messages back (``restore_unacked_once``). If the
connection object was already released, kombu 5.7 dereferences ``None`` and raises AttributeError;
Celery reports "Unrecoverable error" and the worker stops consuming for good (seen in our Redis
restart scenario). Here that case raises a connection error instead, which kombu's close path
ignores as it should: the messages come back after the visibility timeout, and the sweeper
re-sends their jobs from Postgres in any case.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was already released")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
