"""Broker and database outages: Postgres stopped, Redis restarted, Redis flushed."""

from __future__ import annotations

import pytest

from tests.fixtures.faults import fault_service  # noqa: F401
from tests.fixtures.service import Service
from tests.integration.faults import scenarios
from tests.integration.faults.test_kills import assert_all_done

# Stopping PostgreSQL or restarting Redis would break every test running beside these.
pytestmark = pytest.mark.serial


def test_postgres_stopped_5s_mid_run(fault_service: Service) -> None:  # noqa: F811
    assert_all_done(scenarios.postgres_outage(fault_service, 5), 32)


@pytest.mark.slow
def test_postgres_stopped_30s_mid_run(fault_service: Service) -> None:  # noqa: F811
    assert_all_done(scenarios.postgres_outage(fault_service, 30), 32)


def test_redis_restarted_mid_run_and_the_same_worker_resumes(fault_service: Service) -> None:  # noqa: F811
    assert_all_done(scenarios.redis_restart(fault_service), 32)


def test_redis_flushed_mid_run_and_the_sweeper_recovers_every_job(fault_service: Service) -> None:  # noqa: F811
    outcome = scenarios.redis_flush(fault_service)
    assert outcome.notes["unfinished_at_flush"] > 0  # type: ignore[operator]
    assert_all_done(outcome, 32)
