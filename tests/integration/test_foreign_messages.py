"""Foreign messages whose data the database cannot hold end as BAD_MESSAGE at once, not as an outage
retried for minutes, nor as a raw Celery FAILURE; the worker keeps consuming."""

from __future__ import annotations

import base64
import json
import re
import time

from sqlalchemy import func, select

from db.models import ScanJob, Submission
from db.session import new_engine, new_session_factory
from dfscan.queueing import SCAN_TASK
from tests.fixtures.service import Service, service  # noqa: F401
from tests.integration.test_service import raw_celery_message, write_images


def _task_id(message: bytes) -> str:
    return str(json.loads(message)["headers"]["id"])


def _rows(svc: Service) -> tuple[int, int, int]:
    sessions = new_session_factory(new_engine(svc.database_url))
    with sessions() as session:
        submissions = session.scalar(select(func.count()).select_from(Submission)) or 0
        jobs = session.scalar(select(func.count()).select_from(ScanJob)) or 0
        done = session.scalar(select(func.count()).select_from(ScanJob).where(ScanJob.state == "done")) or 0
    return submissions, jobs, done


def test_data_the_database_refuses_and_lone_surrogates_are_bad_messages(service: Service) -> None:  # noqa: F811
    (good,) = write_images(service.images, 1)
    worker = service.start_worker()
    bad = {
        "client_ref over 255 characters": raw_celery_message(
            SCAN_TASK, "inference", [], {"sources": [str(good)], "client_ref": "r" * 300}
        ),
        "lone surrogate in a source": raw_celery_message(
            SCAN_TASK, "inference", [], {"sources": [str(good) + "\ud800.png"]}
        ),
        "lone surrogate in client_ref": raw_celery_message(
            SCAN_TASK, "inference", [], {"sources": [str(good)], "client_ref": "\udcff"}
        ),
        "NUL in a source": raw_celery_message(SCAN_TASK, "inference", [], {"sources": [str(good) + "\x00"]}),
    }
    body = base64.b64decode(json.loads(bad["lone surrogate in a source"])["body"])
    assert b'\\ud800.png"' in body  # the JSON escape a foreign client writes for a lone surrogate
    r = service.redis()
    for message in bad.values():
        r.lpush("inference", message)
    r.lpush("inference", raw_celery_message(SCAN_TASK, "inference", [], {"sources": [str(good)]}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _rows(service)[2] < 1:
        time.sleep(0.3)
    time.sleep(1.0)
    log = worker.text()
    # Only the good message became a submission, and its job was judged: the worker kept going.
    assert _rows(service) == (1, 1, 1), log[-3000:]
    for kind, message in bad.items():
        task_id = _task_id(message)
        line = re.search(rf"Task {SCAN_TASK}\[{task_id}\] (succeeded|raised|retry)[^\n]*", log)
        assert line is not None, f"{kind}: no outcome logged for {task_id}\n{log[-3000:]}"
        assert line.group(1) == "succeeded", f"{kind}: {line.group(0)}"
        assert "'status': 'rejected'" in line.group(0) and "'error_code': 'BAD_MESSAGE'" in line.group(0), (
            kind,
            line.group(0),
        )
    assert "value too long" in log  # the DataError's own words are kept in the reason
    assert "database unavailable" not in log and "retry" not in log.lower(), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
