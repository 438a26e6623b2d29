"""Killed workers lose and duplicate nothing: SIGKILL while buffering and mid-model, SIGTERM drain,
one of two workers killed again and again."""

from __future__ import annotations

import pytest

from tests.fixtures.faults import fault_service  # noqa: F401
from tests.fixtures.service import Service
from tests.integration.faults import scenarios
from tests.integration.faults.scenarios import Outcome


def assert_all_done(outcome: Outcome, n: int) -> None:
    report = outcome.report
    assert report.ok, report.summary()
    assert (report.submitted, report.done, report.failed) == (n, n, 0), report.summary()


# slow: the same recovery (claimed, unfinished jobs come back after their lease) as a kill mid-model, the
# default suite's proof; `make faults` runs this row too.
@pytest.mark.slow
def test_sigkill_while_jobs_wait_in_the_batcher(fault_service: Service) -> None:  # noqa: F811
    outcome = scenarios.kill_while_buffering(fault_service)
    assert outcome.notes["buffered_at_kill"] >= 8  # type: ignore[operator]
    assert_all_done(outcome, 24)


def test_sigkill_while_the_model_runs(fault_service: Service) -> None:  # noqa: F811
    assert_all_done(scenarios.kill_mid_model(fault_service), 48)


def test_sigterm_under_load_drains(fault_service: Service) -> None:  # noqa: F811
    assert_all_done(scenarios.sigterm_under_load(fault_service), 40)


@pytest.mark.slow
def test_one_of_two_workers_killed_three_times(fault_service: Service) -> None:  # noqa: F811
    assert_all_done(scenarios.one_of_two_killed_repeatedly(fault_service, kills=3), 128)
