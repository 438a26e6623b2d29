"""Webhooks end to end: real workers and delivery processes, a real receiver on 127.0.0.1.

Every event arrives signed; a receiver that is down for a while gets every event once it is back
(same event ids); a delivery process SIGKILLed mid-POST loses none; a callback to an internal address
that is not allow-listed is refused with a code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from db.models import WebhookDelivery
from db.session import new_engine, new_session_factory
from dfscan.webhooks import EVENT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from tests.fixtures.service import Service
from tests.fixtures.webhook_receiver import Receiver
from tests.integration.test_service import write_images

SECRET = "whsec-test-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    rx.start()
    try:
        yield rx
    finally:
        rx.release()
        rx.stop()


def webhook_env(svc: Service, **extra: str) -> None:
    svc.env.update(
        {
            "DFSCAN_WEBHOOK_SECRET": SECRET,
            "DFSCAN_WEBHOOK_ALLOWLIST": "127.0.0.1",
            "DFSCAN_WEBHOOK_TIMEOUT": "2",
            "DFSCAN_WEBHOOK_RETRY_BASE": "0.5",
            "DFSCAN_WEBHOOK_RETRY_MAX": "2",
            "DFSCAN_WEBHOOK_POLL_INTERVAL": "0.1",
            **extra,
        }
    )


def submit(svc: Service, url: str, *extra: str) -> str:
    run = svc.cli("submit", str(svc.images), "--callback-url", url, "--format", "json", *extra)
    assert run.returncode == 0, run.stderr
    return str(json.loads(run.stdout)["submission_id"])


def deliveries(svc: Service, submission_id: str) -> list[WebhookDelivery]:
    sessions = new_session_factory(new_engine(svc.database_url))
    with sessions() as session:
        rows = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.submission_id == uuid.UUID(submission_id))
        )
        return list(rows)


def wait_delivered(svc: Service, submission_id: str, n: int, timeout: float) -> list[WebhookDelivery]:
    deadline = time.monotonic() + timeout
    rows: list[WebhookDelivery] = []
    while time.monotonic() < deadline:
        rows = deliveries(svc, submission_id)
        if len(rows) == n and all(row.state == "delivered" for row in rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(
        f"deliveries not all delivered after {timeout}s: {[(r.event, r.state) for r in rows]}"
    )


def start_deliverer(svc: Service, name: str) -> subprocess.Popen[bytes]:
    log = (svc.tmp / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "dfscan.cli.main", "-v", "webhooks", "deliver"],
        env=svc.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_every_event_arrives_signed_with_the_results_fields(service: Service, receiver: Receiver) -> None:
    write_images(service.images, 6)
    (service.images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    webhook_env(service)
    service.start_worker("--sweeper")
    submission_id = submit(service, receiver.url)

    ids = receiver.wait_for(8, timeout=90)  # 7 job.completed + 1 submission.completed
    rows = wait_delivered(service, submission_id, 8, timeout=30)
    assert ids == {str(row.id) for row in rows}

    results = service.cli("results", submission_id, "--format", "json")
    by_job = {row["job_id"]: row for row in map(json.loads, results.stdout.splitlines())}
    jobs_seen, completed = {}, []
    for got in receiver.events():
        assert verify(SECRET, got.headers[SIGNATURE_HEADER], got.body)
        assert not verify("wrong-secret", got.headers[SIGNATURE_HEADER], got.body)
        assert not verify(SECRET, got.headers[SIGNATURE_HEADER], got.body + b" ")
        event = got.event
        assert event["id"] == got.headers[EVENT_ID_HEADER] and event["type"] == got.headers[EVENT_HEADER]
        if event["type"] == "job.completed":
            jobs_seen[event["data"]["job_id"]] = event["data"]
        else:
            completed.append(event["data"])
    assert jobs_seen == by_job  # the same fields and values as `dfscan results --format json`
    assert {row["status"] for row in jobs_seen.values()} == {"done", "failed"}
    assert [row for row in jobs_seen.values() if row["status"] == "failed"][0][
        "error_code"
    ] == "CORRUPT_IMAGE"
    assert completed == [
        {"submission_id": submission_id, "client_ref": None, "total": 7, "done": 6, "failed": 1, "n_jobs": 7}
    ]
    # submission.completed comes after every job.completed of the submission was written
    assert max(r.created_at for r in rows if r.event == "job.completed") <= next(
        r.created_at for r in rows if r.event == "submission.completed"
    )
    listing = service.cli("webhooks", "list", "--json")
    assert listing.returncode == 0 and len(listing.stdout.splitlines()) == 8
    assert {json.loads(line)["state"] for line in listing.stdout.splitlines()} == {"delivered"}


def test_only_the_chosen_events_are_sent(service: Service, receiver: Receiver) -> None:
    write_images(service.images, 3)
    webhook_env(service)
    service.start_worker("--sweeper")
    submission_id = submit(service, receiver.url, "--callback-events", "submission.completed")
    receiver.wait_for(1, timeout=60)
    wait_delivered(service, submission_id, 1, timeout=30)
    time.sleep(1.0)
    assert [got.event["type"] for got in receiver.events()] == ["submission.completed"]
    bad = service.cli(
        "submit", str(service.images), "--callback-url", receiver.url, "--callback-events", "job.done"
    )
    assert bad.returncode == 2 and "unknown webhook events" in bad.stderr


@pytest.mark.parametrize("down_seconds", [6, pytest.param(60, marks=pytest.mark.slow)])
def test_a_receiver_down_for_a_while_gets_every_event_when_it_is_back(
    service: Service, receiver: Receiver, down_seconds: int
) -> None:
    write_images(service.images, 5)
    # Backoff capped at a tenth of the outage: ~10 attempts while it is down, well under the 20 allowed.
    webhook_env(service, DFSCAN_WEBHOOK_RETRY_MAX=str(max(2, down_seconds // 10)))
    receiver.stop()
    service.start_worker("--sweeper")
    submission_id = submit(service, receiver.url)
    down_until = time.monotonic() + down_seconds
    time.sleep(min(4.0, down_seconds / 2))
    failed = service.cli("webhooks", "list", "--failed", "--json")
    pending = [json.loads(line) for line in failed.stdout.splitlines()]
    assert pending and {p["error_code"] for p in pending} == {"FETCH_FAILED"}, failed.stdout
    assert all(p["state"] == "pending" and p["attempts"] >= 1 for p in pending)
    time.sleep(max(0.0, down_until - time.monotonic()))
    assert receiver.events() == []
    receiver.start()

    ids = receiver.wait_for(6, timeout=30)  # 5 job.completed + 1 submission.completed
    rows = wait_delivered(service, submission_id, 6, timeout=30)
    assert ids == {str(row.id) for row in rows}  # at least once, under the ids written at the verdict
    # Every event that failed while the receiver was down went again; an event written late (a busy
    # machine) may have found the receiver back at its first attempt.
    retried = {p["id"] for p in pending}
    assert all(row.attempts >= 2 for row in rows if str(row.id) in retried)
    assert all(row.attempts >= 1 for row in rows)
    for got in receiver.events():
        assert verify(SECRET, got.headers[SIGNATURE_HEADER], got.body)


def test_a_delivery_process_killed_mid_post_loses_no_event(service: Service, receiver: Receiver) -> None:
    write_images(service.images, 8)
    webhook_env(service)
    receiver.hang()  # the first POSTs arrive and get no answer
    service.start_worker()  # no sweeper: only the delivery processes below deliver
    first = start_deliverer(service, "deliverer-1")
    try:
        submission_id = submit(service, receiver.url)
        deadline = time.monotonic() + 60
        while receiver.hanging == 0:
            assert time.monotonic() < deadline, "no delivery reached the receiver"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)  # mid-POST: the claimed rows never hear back
        first.wait(10)
        held = receiver.event_ids()
        receiver.release()
        second = start_deliverer(service, "deliverer-2")
        try:
            ids = receiver.wait_for(9, timeout=90)  # 8 job.completed + 1 submission.completed
            rows = wait_delivered(service, submission_id, 9, timeout=30)
        finally:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait(10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert ids == {str(row.id) for row in rows}
    assert held <= ids
    redelivered = [row for row in rows if str(row.id) in held]
    assert redelivered and all(row.attempts >= 2 for row in redelivered)  # the killed attempt counted


def test_a_callback_to_an_internal_address_not_allow_listed_is_refused(
    service: Service, receiver: Receiver
) -> None:
    write_images(service.images, 2)
    webhook_env(service, DFSCAN_WEBHOOK_ALLOWLIST="")
    refused = service.cli("submit", str(service.images), "--callback-url", receiver.url)
    assert refused.returncode == 2 and "BLOCKED_DESTINATION" in refused.stderr
    assert "127.0.0.1 is not a public address (loopback)" in refused.stderr

    # A producer that allows it, workers that do not: refused at delivery, never contacted.
    service.start_worker("--sweeper")
    allowing = {**service.env, "DFSCAN_WEBHOOK_ALLOWLIST": "127.0.0.1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dfscan.cli.main",
            "submit",
            str(service.images),
            "--callback-url",
            receiver.url,
        ],
        env=allowing,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    submission_id = run.stdout.strip()
    deadline = time.monotonic() + 60
    while True:
        rows = deliveries(service, submission_id)
        if len(rows) == 3 and all(row.state == "failed" for row in rows):
            break
        assert time.monotonic() < deadline, [(r.event, r.state, r.error_code) for r in rows]
        time.sleep(0.2)
    assert {(row.error_code, row.attempts) for row in rows} == {("BLOCKED_DESTINATION", 1)}
    assert receiver.events() == []
    listing = service.cli("webhooks", "list", "--failed", "--json")
    listed = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {(item["state"], item["error_code"]) for item in listed} == {("failed", "BLOCKED_DESTINATION")}
    assert len(listed) == 3 and "not a public address" in listed[0]["error"]

    # Redeliver after allow-listing it on the delivery side: the same event ids arrive.
    service.workers[0].kill()  # its delivery loop still refuses 127.0.0.1
    env = {**service.env, "DFSCAN_WEBHOOK_ALLOWLIST": "127.0.0.1"}
    for row in rows:
        again = subprocess.run(
            [sys.executable, "-m", "dfscan.cli.main", "webhooks", "redeliver", str(row.id)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0, again.stderr
    once = subprocess.run(
        [sys.executable, "-m", "dfscan.cli.main", "webhooks", "deliver", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert once.returncode == 0 and "delivered=3" in once.stdout, once.stdout + once.stderr
    assert receiver.event_ids() == {str(row.id) for row in rows}
    missing = service.cli("webhooks", "redeliver", str(uuid.uuid4()))
    assert missing.returncode == 1


def test_the_worker_side_writes_events_for_foreign_messages(service: Service, receiver: Receiver) -> None:
    paths = write_images(service.images, 2)
    webhook_env(service)
    service.start_worker("--sweeper")
    from dfscan.queueing import SCAN_TASK, new_celery_app
    from tests.integration.test_service import settings_for

    app = new_celery_app(settings_for(service))
    app.send_task(
        SCAN_TASK,
        kwargs={
            "sources": [str(p) for p in paths],
            "client_ref": "foreign-1",
            "callback_url": receiver.url,
            "callback_events": ["submission.completed"],
        },
        queue="inference",
    )
    receiver.wait_for(1, timeout=60)
    (got,) = receiver.events()
    assert got.event["type"] == "submission.completed"
    assert got.event["data"]["client_ref"] == "foreign-1" and got.event["data"]["done"] == 2
    assert verify(SECRET, got.headers[SIGNATURE_HEADER], got.body)
