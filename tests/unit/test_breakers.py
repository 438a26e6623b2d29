"""The webhook breakers' rules in memory, and a loop that keeps its own when Redis cannot be reached.
The shared (Redis) breakers with two loops: tests/integration/test_webhook_fairness.py."""

from __future__ import annotations

import logging

import pytest

from worker.breakers import BREAKER_FAILURES, BREAKER_OPEN, LocalBreakers, shared_breakers

RX = "https://rx.example:443"


def test_failures_in_a_row_open_the_breaker_then_one_probe_and_a_success_closes_it() -> None:
    breakers = LocalBreakers(probe_lease=30.0)
    assert breakers.room([RX], 16, {RX: 3}) == ({RX: 13}, set())
    failures = [breakers.failed(RX) for _ in range(BREAKER_FAILURES)]
    assert [f.opened for f in failures] == [False] * (BREAKER_FAILURES - 1) + [True]
    assert failures[-1].open_for == BREAKER_OPEN
    assert breakers.room([RX], 16, {}) == ({RX: 0}, set())
    breakers.states[RX].open_until = 0.0  # the open period is over
    assert breakers.room([RX], 16, {}) == ({RX: 1}, {RX})  # half-open: one probe
    assert breakers.room([RX], 16, {}) == ({RX: 0}, set())  # held
    breakers.release_probe(RX)  # it claimed nothing
    assert breakers.room([RX], 16, {}) == ({RX: 1}, {RX})
    again = breakers.failed(RX)
    assert again.opened and again.open_for == 2 * BREAKER_OPEN  # reopens for twice as long
    breakers.succeeded(RX)
    assert breakers.room([RX], 16, {}) == ({RX: 16}, set())


def test_without_redis_a_loop_keeps_its_own_breakers(caplog: pytest.LogCaptureFixture) -> None:
    breakers = shared_breakers("redis://127.0.0.1:1/0", "postgresql://u:secret@db/dfscan", probe_lease=30.0)
    assert "secret" not in breakers.prefix
    with caplog.at_level(logging.WARNING, logger="worker.breakers"):
        for _ in range(BREAKER_FAILURES):
            last = breakers.failed(RX)
        assert last.opened
        assert breakers.room([RX], 16, {}) == ({RX: 0}, set())
    assert sum("cannot be reached" in r.message for r in caplog.records) == 1  # once a minute, not per call


def test_deployments_sharing_a_redis_never_share_breakers() -> None:
    one = shared_breakers("redis://127.0.0.1:1/0", "postgresql://u:a@db/one", probe_lease=30.0)
    same = shared_breakers("redis://127.0.0.1:1/0", "postgresql://u:b@db/one", probe_lease=30.0)
    other = shared_breakers("redis://127.0.0.1:1/0", "postgresql://u:a@db/other", probe_lease=30.0)
    assert one.key(RX) == same.key(RX) != other.key(RX)
