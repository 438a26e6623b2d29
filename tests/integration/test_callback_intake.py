"""Foreign Celery messages' callback URLs go through the same check as `dfscan submit` (one function):
a CRLF, internal or 3,000-character callback is rejected at intake with its own code and nothing is
stored; the same task id sent again with another callback is IDEMPOTENCY_CONFLICT, not silently kept;
the worker's log never shows a callback URL's password."""

from __future__ import annotations

import base64
import json
import re
import time

from sqlalchemy import func, select

from db.models import Submission
from db.session import new_engine, new_session_factory
from dfscan.queueing import SCAN_TASK
from tests.fixtures.service import Service, service  # noqa: F401
from tests.integration.test_service import raw_celery_message, write_images


def _with_kwargs(message: bytes, kwargs: dict) -> bytes:
    """The same message (same task id) carrying other kwargs: a client that resends under one id."""
    doc = json.loads(message)
    doc["body"] = base64.b64encode(
        json.dumps([[], kwargs, {"callbacks": None, "errbacks": None}]).encode()
    ).decode()
    return json.dumps(doc).encode()


def _outcomes(log: str, message: bytes) -> list[str]:
    task_id = json.loads(message)["headers"]["id"]
    return re.findall(rf"Task {SCAN_TASK}\[{task_id}\] succeeded[^\n]*", log)


def _outcome(log: str, message: bytes) -> str:
    """The last outcome logged for the message's task id."""
    lines = _outcomes(log, message)
    assert lines, f"no outcome\n{log[-3000:]}"
    return lines[-1]


def test_foreign_callbacks_are_checked_at_intake_like_submit(service: Service) -> None:  # noqa: F811
    (good,) = write_images(service.images, 1)
    worker = service.start_worker()
    src = [str(good)]
    bad = {
        "UNSUPPORTED_SOURCE": raw_celery_message(
            SCAN_TASK,
            "inference",
            [],
            {"sources": src, "callback_url": "https://hooks.example.com/x\r\nX-A: 1"},
        ),
        "BLOCKED_DESTINATION": raw_celery_message(
            SCAN_TASK,
            "inference",
            [],
            {"sources": src, "callback_url": "http://bob:hunter2@169.254.169.254/x"},
        ),
        "CALLBACK_URL_TOO_LONG": raw_celery_message(
            SCAN_TASK,
            "inference",
            [],
            {"sources": src, "callback_url": "https://hooks.example.com/" + "a" * 3000},
        ),
    }
    first = raw_celery_message(
        SCAN_TASK,
        "inference",
        [],
        {"sources": src, "callback_url": "https://bob:hunter2@hooks.example.com/a"},
    )
    r = service.redis()
    for message in bad.values():
        r.lpush("inference", message)
    r.lpush("inference", first)
    sessions = new_session_factory(new_engine(service.database_url))

    def submissions() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(Submission)) or 0

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and submissions() < 1:
        time.sleep(0.3)
    resend = _with_kwargs(first, {"sources": src, "callback_url": "https://hooks.example.com/other"})
    r.lpush("inference", resend)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_outcomes(worker.text(), resend)) < 2:
        time.sleep(0.3)
    time.sleep(1.0)
    log = worker.text()
    for code, message in bad.items():
        line = _outcome(log, message)
        assert "'status': 'rejected'" in line and f"'error_code': '{code}'" in line, line
    conflict = _outcome(log, resend)
    assert "'error_code': 'IDEMPOTENCY_CONFLICT'" in conflict, conflict
    with sessions() as session:
        (stored,) = session.scalars(select(Submission)).all()  # only the good message was stored
        assert stored.callback_url == "https://bob:hunter2@hooks.example.com/a"  # the first one, unchanged
    assert "hunter2" not in log and "Traceback" not in log, log[-3000:]
