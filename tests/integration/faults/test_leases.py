"""Leases and the sweeper: a job slower than its lease is judged once; a bulk backlog is not re-sent."""

from __future__ import annotations

from dfscan.queueing import SCAN_TASK
from tests.fixtures.faults import fault_service  # noqa: F401
from tests.fixtures.service import Service
from tests.integration.faults import scenarios


def test_a_job_slower_than_its_lease_is_fetched_claimed_and_judged_once(fault_service: Service) -> None:  # noqa: F811
    outcome = scenarios.slow_job_vs_lease(fault_service)
    report = outcome.report
    assert report.ok, report.summary()
    assert (report.submitted, report.done, report.failed) == (5, 5, 0), report.summary()
    assert not report.duplicated
    # The origin saw one request and the row one attempt: no second claim while the first ran.
    assert outcome.notes["requests"] == 1, outcome.notes
    assert outcome.notes["attempts"] == 1, outcome.notes
    assert "re-send" not in outcome.log and "re-sent" not in outcome.log, outcome.log[-3000:]


def test_a_bulk_backlog_keeps_its_message_count_and_a_flush_is_recovered_once(fault_service: Service) -> None:  # noqa: F811
    outcome = scenarios.bulk_backlog_vs_sweeper(fault_service)
    report = outcome.report
    assert report.ok, report.summary()
    assert (report.submitted, report.done, report.failed) == (400, 400, 0), report.summary()
    assert not report.duplicated
    assert outcome.notes["llen_per_sweep"] == 50 and outcome.notes["after_flush"] == 50, outcome.notes


def test_the_sweeper_reads_job_ids_from_waiting_and_unacknowledged_messages(fault_service: Service) -> None:  # noqa: F811
    import json
    import uuid

    from dfscan.outbox import queued_job_ids
    from tests.integration.test_service import raw_celery_message

    a, b, c, d = (uuid.uuid4() for _ in range(4))
    r = fault_service.redis()
    r.lpush("inference", raw_celery_message(SCAN_TASK, "inference", [], {"job_ids": [str(a), str(b)]}))
    r.lpush(
        "inference.interactive",
        raw_celery_message(SCAN_TASK, "inference.interactive", [], {"job_id": str(c)}),
    )
    r.lpush(
        "inference", raw_celery_message(SCAN_TASK, "inference", [], {"sources": ["/x.png"]})
    )  # names no job
    r.lpush("inference", b"not json")
    r.lpush("inference", raw_celery_message("dfscan.train", "inference", [], {"job_id": str(uuid.uuid4())}))
    # kombu's Redis transport keeps a delivered, unacknowledged message as [payload, exchange, routing key].
    payload = json.loads(raw_celery_message(SCAN_TASK, "inference", [], {"job_id": str(d)}))
    r.hset("unacked", "tag-1", json.dumps([payload, "", "inference"]))
    r.hset("unacked", "tag-2", "garbage")
    assert queued_job_ids(fault_service.broker_url) == {a, b, c, d}
