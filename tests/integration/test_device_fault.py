"""A sticky device fault ends the worker loudly and gives its jobs back with their attempt.

The fault is torch's own words for a broken CUDA context ("CUDA error: an illegal memory access was
encountered"), raised by the classifier's forward once a trigger file exists: a ``sitecustomize`` on the
worker's PYTHONPATH wraps ``Classifier.predict`` (the worker process is real; only the device is mocked).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import select

from db.models import ScanJob
from db.session import new_engine, new_session_factory
from producer.client import ScanClient
from tests.fixtures.service import Service
from tests.integration.test_service import settings_for, write_images

STICKY = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace "
    "below might be incorrect."
)

HOOK = """
import os

import worker.inference.model.classifier as _classifier

_predict = _classifier.Classifier.predict


def predict(self, pixels):
    if os.path.exists(os.environ["DFSCAN_TEST_DEVICE_FAULT"]):
        raise RuntimeError({sticky!r})
    return _predict(self, pixels)


_classifier.Classifier.predict = predict
"""


def _job(svc: Service, job_id: object) -> ScanJob:
    engine = new_engine(svc.database_url)
    try:
        with new_session_factory(engine)() as session:
            job = session.scalars(select(ScanJob).where(ScanJob.id == job_id)).one()
            session.expunge(job)
            return job
    finally:
        engine.dispose()


def test_a_sticky_cuda_error_ends_the_worker_with_one_message_and_its_jobs_keep_their_attempts(
    service: Service, tmp_path: Path
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK.format(sticky=STICKY))
    trigger = tmp_path / "device-broken"
    faulty = service.start_worker(
        "--concurrency=4",
        env={
            "PYTHONPATH": os.pathsep.join([str(hook), service.env.get("PYTHONPATH", os.getcwd())]),
            "DFSCAN_TEST_DEVICE_FAULT": str(trigger),
        },
    )
    trigger.touch()  # the model loaded fine; from now on the "device" is broken
    (path,) = write_images(service.images, 1)
    client = ScanClient(settings_for(service))
    job_id = client.submit([str(path)]).job_ids[0]

    deadline = time.monotonic() + 120
    while faulty.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert faulty.proc.returncode == 1, faulty.text()[-3000:]
    text = faulty.text()
    assert text.count("error DEVICE_FAULT: the worker cannot serve: ") == 1, text[-3000:]
    assert "illegal memory access" in text
    job = _job(service, job_id)
    assert (job.state, job.attempts, job.worker) == ("queued", 0, None)  # given back, attempt refunded

    healthy = service.start_worker("--concurrency=4")  # the requeued message reaches a healthy worker
    deadline = time.monotonic() + 120
    while _job(service, job_id).state != "done" and time.monotonic() < deadline:
        time.sleep(0.2)
    job = _job(service, job_id)
    assert (job.state, job.attempts) == ("done", 1), healthy.text()[-3000:]
