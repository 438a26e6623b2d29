"""Prometheus metrics over HTTP: a real worker after scanning images, and `dfscan exporter` on a real
queue (Postgres and Redis), scraped on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families

from producer.client import ScanClient
from tests.fixtures.service import Service
from tests.fixtures.webhook_receiver import free_port
from tests.integration.test_service import settings_for, write_images

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, timeout: float = 30.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not scraped; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_a_worker_serves_job_batch_stage_model_and_memory_metrics(service: Service) -> None:
    port = free_port()
    write_images(service.images, 10)
    (service.images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    service.start_worker(env={"DFSCAN_METRICS_PORT": str(port)})
    run = service.cli("submit", str(service.images), "--wait", "--timeout", "90", "--format", "json")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    (single,) = write_images(service.images, 1, prefix="urgent", size=(40, 40))
    urgent = service.cli("submit", str(single), "--priority", "7", "--wait", "--timeout", "60")
    assert urgent.returncode == 0, urgent.stderr

    samples = scrape(port)
    assert value(samples, "dfscan_jobs_total", outcome="done", error_code="", lane="inference") == 10
    assert (
        value(samples, "dfscan_jobs_total", outcome="failed", error_code="CORRUPT_IMAGE", lane="inference")
        == 1
    )
    assert (
        value(samples, "dfscan_jobs_total", outcome="done", error_code="", lane="inference.interactive") == 1
    )
    assert value(samples, "dfscan_images_judged_total", cached="false") == 11
    assert value(samples, "dfscan_images_judged_total", cached="true") == 0
    inputs = value(samples, "dfscan_model_inputs_total")
    batches = value(samples, "dfscan_model_batches_total")
    assert inputs == 11 and 2 <= batches <= 11
    assert value(samples, "dfscan_model_batch_size_count") == batches
    assert value(samples, "dfscan_model_batch_size_sum") == inputs
    assert value(samples, "dfscan_model_batch_seconds_count") == batches
    for stage, n in (("queue_wait", 12), ("fetch", 11), ("decode", 11), ("infer", 11)):
        assert value(samples, "dfscan_stage_seconds_count", stage=stage) == n, stage
        assert value(samples, "dfscan_stage_seconds_bucket", stage=stage, le="+Inf") == n
    assert value(samples, "dfscan_stage_seconds_count", stage="db_write") >= 2
    # Faces are on by default (auto): the face detector ran once on each of the 11 judged images.
    assert value(samples, "dfscan_stage_seconds_count", stage="detect") == 11
    version = next(row["model_version"] for row in rows if row["status"] == "done")
    assert value(samples, "dfscan_model_info", version=version, device="cpu") == 1
    assert value(samples, "dfscan_jobs_in_flight") == 0
    assert value(samples, "process_resident_memory_bytes") > 50 * 2**20


def test_jobs_named_by_an_undecodable_message_are_counted_as_bad_message(service: Service) -> None:
    from db import jobs
    from db.session import new_engine, new_session_factory
    from dfscan.queueing import SCAN_TASK
    from tests.integration.test_service import raw_celery_message

    port = free_port()
    service.start_worker(env={"DFSCAN_METRICS_PORT": str(port)})
    engine = new_engine(service.database_url)
    with new_session_factory(engine).begin() as s:  # job rows that were never sent
        _, rows, _ = jobs.create_submission(s, ["/img/a.jpg", "/img/b.jpg"])
    engine.dispose()
    r = service.redis()
    bad = [  # a job named beside an unknown field, both jobs twice (a repeat fails nothing), none at all
        {"job_id": str(rows[0].id), "colour": "red"},
        {"job_ids": [str(rows[0].id), str(rows[1].id)], "job_id": str(rows[1].id)},
        {"colour": "red"},
    ]
    for kwargs in bad:
        r.lpush("inference", raw_celery_message(SCAN_TASK, "inference", [], kwargs))
    deadline = time.monotonic() + 60
    while service.workers[0].text().count("rejected message") < 3:
        assert time.monotonic() < deadline, service.workers[0].text()[-2000:]
        time.sleep(0.2)
    samples = scrape(port)
    assert (
        value(samples, "dfscan_jobs_total", outcome="failed", error_code="BAD_MESSAGE", lane="inference") == 2
    )
    with new_session_factory(new_engine(service.database_url))() as s:
        stored = [jobs.get_job(s, row.id) for row in rows]
        assert {(job.state, job.error_code) for job in stored if job} == {("failed", "BAD_MESSAGE")}


@contextmanager
def exporter(svc: Service, port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfscan.cli.main", "exporter", "--port", str(port)],
        env=svc.env,
        stdout=subprocess.DEVNULL,
        stderr=(svc.tmp / "exporter.log").open("wb"),
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_the_exporter_serves_queue_depth_age_and_the_scaling_signal(service: Service) -> None:
    port = free_port()
    paths = write_images(service.images, 5)
    client = ScanClient(
        settings_for(service)
    )  # `dfscan submit` is this client (tests/integration/test_service.py)
    for path in paths[:3]:
        client.submit([str(path)])
    for path in paths[3:]:
        client.submit([str(path)], priority=5)
    service.redis().lpush("inference\x06\x163", b"{}")  # a message in a kombu priority list
    time.sleep(1.2)
    with exporter(service, port):
        samples = scrape(port)
        assert value(samples, "dfscan_exporter_source_up", source="postgres") == 1
        assert value(samples, "dfscan_exporter_source_up", source="redis") == 1
        assert value(samples, "dfscan_queue_jobs", lane="inference", state="queued") == 3
        assert value(samples, "dfscan_queue_jobs", lane="inference.interactive", state="queued") == 2
        assert value(samples, "dfscan_queue_jobs", lane="inference", state="running") == 0
        # One job each, of one tenant: its 2nd and 3rd go out one fair-share step lower each (1, 2).
        for step in ("0", "1", "2"):
            assert value(samples, "dfscan_queue_messages", queue="inference", priority=step) == 1
        assert value(samples, "dfscan_queue_messages", queue="inference", priority="3") == 1
        assert value(samples, "dfscan_queue_messages", queue="inference.interactive", priority="0") == 2
        assert value(samples, "dfscan_scaling_jobs_outstanding") == 5
        assert value(samples, "dfscan_queue_oldest_job_age_seconds", lane="inference") >= 1.0
        assert value(samples, "dfscan_queue_oldest_job_age_seconds", lane="inference.interactive") >= 1.0
        assert total(samples, "dfscan_webhook_deliveries") == 0

        service.redis().delete("inference\x06\x163")
        service.start_worker()
        deadline = time.monotonic() + 60
        while True:
            samples = scrape(port)
            if value(samples, "dfscan_scaling_jobs_outstanding") == 0:
                break
            assert time.monotonic() < deadline, "the queue never drained"
            time.sleep(0.5)
        assert total(samples, "dfscan_queue_messages") == 0
        assert value(samples, "dfscan_queue_oldest_job_age_seconds", lane="inference") == 0
