"""Hostile and repeated messages: duplicates give one verdict, malformed ones fail with BAD_MESSAGE."""

from __future__ import annotations

import pytest

from tests.fixtures.faults import fault_service  # noqa: F401
from tests.fixtures.service import Service
from tests.integration.faults import scenarios


# slow: tests/integration/test_service.py::test_duplicate_delivery_gives_one_verdict is the default suite's
# proof (the same three deliveries per job); `make faults` runs this row too.
@pytest.mark.slow
def test_a_message_delivered_three_times_gives_one_verdict_per_job(fault_service: Service) -> None:  # noqa: F811
    outcome = scenarios.duplicate_delivery(fault_service)
    report = outcome.report
    assert report.ok, report.summary()
    assert (report.submitted, report.done, report.failed) == (8, 8, 0), report.summary()
    assert not report.duplicated


def test_malformed_messages_fail_their_job_with_a_code_and_the_worker_keeps_going(
    fault_service: Service,  # noqa: F811
) -> None:
    outcome = scenarios.malformed_messages(fault_service)
    report = outcome.report
    assert report.ok, report.summary()
    assert (report.submitted, report.done, report.failed) == (6, 5, 1), report.summary()
    assert report.failed_codes == {"BAD_MESSAGE": 1}
    # Each malformed message is logged as rejected; the undecodable body by kombu/celery.
    assert outcome.log.count("rejected message") >= len(scenarios.MALFORMED_KINDS) - 1, outcome.log[-4000:]
    check = fault_service.cli("check", str(report.submission_id))
    assert check.returncode == 0 and "submitted=6 done=5 failed=1 lost=0 duplicated=0" in check.stdout
