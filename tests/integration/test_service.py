"""The distributed system end to end: submit -> Redis -> real worker processes -> Postgres."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from db.models import ScanJob, VerdictRow
from db.session import new_engine, new_session_factory
from dfscan.outbox import send_job
from dfscan.queueing import SCAN_TASK, new_celery_app
from dfscan.settings import Settings
from producer.client import ScanClient
from tests.fixtures.service import Service


def write_images(
    folder: Path, n: int, *, size: tuple[int, int] = (64, 48), prefix: str = "img"
) -> list[Path]:
    paths = []
    for i in range(n):
        img = Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256))
        img.putpixel((i % size[0], i % size[1]), (255, 255, 255))
        path = folder / f"{prefix}{i:03d}.png"
        img.save(path)
        paths.append(path)
    return paths


def settings_for(svc: Service) -> Settings:
    return Settings(database_url=svc.database_url, broker_url=svc.broker_url, _env_file=None)  # type: ignore[call-arg]


def counts(svc: Service) -> tuple[int, int, int]:
    sessions = new_session_factory(new_engine(svc.database_url))
    with sessions() as session:
        jobs = session.scalar(select(func.count()).select_from(ScanJob)) or 0
        verdicts = session.scalar(select(func.count()).select_from(VerdictRow)) or 0
        done = session.scalar(select(func.count()).select_from(ScanJob).where(ScanJob.state == "done")) or 0
    return jobs, done, verdicts


def test_submit_wait_results_and_check_from_the_cli(service: Service) -> None:
    write_images(service.images, 10)
    (service.images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (service.images / "notes.txt").write_text("hello")
    service.start_worker("--sweeper")

    run = service.cli("submit", str(service.images), "--wait", "--timeout", "90", "--format", "json")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(rows) == 12
    by_name = {Path(row["source"]).name: row for row in rows}
    for i in range(10):
        row = by_name[f"img{i:03d}.png"]
        assert row["status"] == "done", row
        assert row["label"] in ("real", "fake") and 0.0 <= row["fake_score"] <= 1.0
        assert row["model_version"].startswith("model@sha256:")
        # The worker read what the file declares (nothing) and stored it beside the score.
        assert row["provenance"] is not None and row["provenance"]["manifest"] is False
        uuid.UUID(row["job_id"])
    assert by_name["broken.jpg"]["error_code"] == "CORRUPT_IMAGE"
    assert by_name["notes.txt"]["error_code"] == "UNSUPPORTED_FORMAT"

    submission_id = rows[0]["submission_id"]
    check = service.cli("check", submission_id)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "submitted=12 done=10 failed=2 lost=0 duplicated=0" in check.stdout

    status = service.cli("status", submission_id)
    assert "done=10" in status.stdout and "failed=2" in status.stdout
    fakes = service.cli("results", submission_id, "--label", "fake", "--format", "json")
    fake_rows = [json.loads(line) for line in fakes.stdout.splitlines()]
    assert all(row["label"] == "fake" for row in fake_rows)
    assert len(fake_rows) == sum(1 for row in rows if row.get("label") == "fake")


def test_paths_outside_the_worker_roots_and_internal_urls_are_refused(
    service: Service, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (secret,) = write_images(outside, 1, prefix="secret")
    service.start_worker()
    client = ScanClient(settings_for(service))
    sub = client.submit([str(secret), "http://127.0.0.1:6379/", "file:///etc/passwd", "/dev/zero"])
    sub.wait(60)
    codes = {row.source: row.error_code for row in sub.results()}
    assert codes == {
        str(secret): "PATH_NOT_ALLOWED",
        "http://127.0.0.1:6379/": "BLOCKED_DESTINATION",
        "file:///etc/passwd": "UNSUPPORTED_SOURCE",
        "/dev/zero": "PATH_NOT_ALLOWED",
    }


def raw_celery_message(task: str, queue: str, args: list, kwargs: dict) -> bytes:
    """A protocol v2 JSON message as a foreign client (celery-node) writes it to Redis."""
    task_id = str(uuid.uuid4())
    body = base64.b64encode(json.dumps([args, kwargs, {"callbacks": None, "errbacks": None}]).encode())
    message = {
        "body": body.decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "js", "task": task, "id": task_id, "root_id": task_id, "parent_id": None},
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }
    return json.dumps(message).encode()


def test_a_foreign_client_message_with_only_sources_is_processed_and_stored(service: Service) -> None:
    paths = write_images(service.images, 3)
    service.start_worker()
    r = service.redis()
    r.lpush("inference", raw_celery_message(SCAN_TASK, "inference", [], {"sources": [str(p) for p in paths]}))
    r.lpush("inference", raw_celery_message(SCAN_TASK, "inference", [[str(paths[0])]], {}))
    r.lpush("inference", raw_celery_message(SCAN_TASK, "inference", [], {"job_id": 17, "colour": "red"}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and counts(service)[1] < 4:
        time.sleep(0.3)
    jobs, done, verdicts = counts(service)
    assert (jobs, done, verdicts) == (4, 4, 4)
    assert service.workers[0].proc.poll() is None, "the malformed message must not stop the worker"
    assert "rejected message" in service.workers[0].text()


def test_duplicate_delivery_gives_one_verdict(service: Service) -> None:
    write_images(service.images, 4)
    client = ScanClient(settings_for(service))
    sub = client.submit(sorted(str(p) for p in service.images.iterdir()))
    app = new_celery_app(settings_for(service))
    for job_id in sub.job_ids:  # every message a second and a third time
        send_job(app, job_id, 0)
        send_job(app, job_id, 0)
    service.start_worker()
    sub.wait(60)
    time.sleep(1.0)  # let the extra deliveries run too
    assert counts(service) == (4, 4, 4)
    assert service.cli("check", str(sub.id)).returncode == 0


def test_idempotency_key_makes_a_retried_submit_return_the_first_submission(service: Service) -> None:
    write_images(service.images, 2)
    client = ScanClient(settings_for(service))
    sources = sorted(str(p) for p in service.images.iterdir())
    first = client.submit(sources, idempotency_key="backend-req-42")
    second = client.submit(sources, idempotency_key="backend-req-42")
    assert second.id == first.id and not second.created
    assert second.job_ids == first.job_ids
    assert service.messages() == 2  # no second set of messages


def test_backpressure_fails_fast_past_the_queue_depth(service: Service) -> None:
    write_images(service.images, 3)
    settings = settings_for(service).model_copy(update={"queue_max_depth": 4})
    client = ScanClient(settings)
    sources = sorted(str(p) for p in service.images.iterdir())
    client.submit(sources)
    from dfscan.exceptions import QueueFullError

    with pytest.raises(QueueFullError, match="DFSCAN_QUEUE_MAX_DEPTH=4"):
        client.submit(sources)


def test_messages_that_could_not_be_sent_are_sent_later_by_the_sweeper(service: Service) -> None:
    write_images(service.images, 3)
    broken = settings_for(service).model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    client = ScanClient(broken)
    client.settings = broken.model_copy(update={"queue_max_depth": 10**9})
    client._check_capacity = lambda n, w: None  # type: ignore[method-assign]  # the broker is "down"
    sub = client.submit(sorted(str(p) for p in service.images.iterdir()))
    assert service.messages() == 0
    assert sub.status()["queued"] == 3
    service.start_worker("--sweeper")
    sub.wait(60)
    assert sub.status()["done"] == 3


def test_several_jobs_per_message_each_get_their_own_outcome(service: Service) -> None:
    write_images(service.images, 18)
    (service.images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (service.images / "empty.png").write_bytes(b"")
    service.env["DFSCAN_JOBS_PER_MESSAGE"] = "8"
    settings = settings_for(service).model_copy(update={"jobs_per_message": 8})
    client = ScanClient(settings)
    sub = client.submit(sorted(str(p) for p in service.images.iterdir()))
    assert service.messages() == 3  # 20 jobs in messages of 8, 8 and 4
    app = new_celery_app(settings)
    for job_id in sub.job_ids[:3]:  # and a few single-job duplicates on top
        send_job(app, job_id, 0)
    service.start_worker()
    sub.wait(60)
    codes = {Path(row.source).name: row.error_code for row in sub.results() if row.status == "failed"}
    assert codes == {"broken.jpg": "CORRUPT_IMAGE", "empty.png": "CORRUPT_IMAGE"}
    assert counts(service) == (20, 18, 18)
    check = service.cli("check", str(sub.id))
    assert check.returncode == 0 and "done=18 failed=2 lost=0 duplicated=0" in check.stdout, check.stdout


def test_transient_http_errors_are_retried_then_fail_with_their_code(service: Service) -> None:
    from tests.fixtures.http_server import serve_http

    with serve_http() as server:
        service.env.update({"DFSCAN_URL_ALLOWLIST": "127.0.0.1", "DFSCAN_MAX_ATTEMPTS": "3"})
        service.start_worker()
        client = ScanClient(settings_for(service))
        sub = client.submit([server.url("/status/503"), server.url("/status/404")])
        sub.wait(90)
        rows = {row.source.rsplit("/", 1)[-1]: row for row in sub.results()}
        assert rows["503"].error_code == "HTTP_STATUS" and rows["503"].attempts == 3
        assert rows["404"].error_code == "HTTP_STATUS" and rows["404"].attempts == 1
        assert server.hits["/status/503"] == 3 and server.hits["/status/404"] == 1
