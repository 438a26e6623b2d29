"""The invariant checker behind `dfscan check`: every job of a submission has exactly one outcome."""

from __future__ import annotations

import time
import uuid

from db.results import CheckReport
from db.results import check_submission as _check
from db.session import new_engine, new_session_factory
from dfscan.ids import parse_id
from dfscan.settings import Settings


def check_submission(
    settings: Settings, submission_id: str | uuid.UUID, *, deadline: float = 0.0
) -> CheckReport:
    """Check now, or poll until every job is final or ``deadline`` seconds pass, then check.
    BAD_ARGUMENT for a malformed id, UNKNOWN_ID for one that names no submission."""
    sid = parse_id(submission_id, "submission id")
    sessions = new_session_factory(new_engine(settings.database_url))
    stop = time.monotonic() + deadline
    while True:
        with sessions() as session:
            report = _check(session, sid, max_attempts=settings.max_attempts)
        if not report.lost and not report.missing_seqs or time.monotonic() >= stop:
            return report
        time.sleep(0.5)
