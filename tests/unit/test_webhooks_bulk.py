"""`dfscan webhooks redeliver --failed/--since/--receiver/--submission`: the matching deliveries, and only
those, are pending again with a fresh set of attempts; `webhooks list` masks URL credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, webhooks
from db.migrate import upgrade
from db.models import WebhookDelivery, utcnow
from db.session import new_engine, new_session_factory
from tests.fixtures.databases import sqlite_url  # noqa: F401

A = "https://alice:s3cret@hooks.a.example/in"
B = "https://hooks.b.example/in"


@pytest.fixture
def factory(sqlite_url: str) -> Iterator[sessionmaker[Session]]:  # noqa: F811
    upgrade(sqlite_url)
    engine = new_engine(sqlite_url)
    yield new_session_factory(engine)
    engine.dispose()


def _delivered_events(factory: sessionmaker[Session], url: str, n: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with factory.begin() as s:
        sub, rows, _ = jobs.create_submission(
            s, [f"/img/{i}.png" for i in range(n)], callback_url=url, callback_events=["job.completed"]
        )
        for row in rows:
            jobs.finish_failed(s, row.id, code="CORRUPT_IMAGE", message="bad")
        sid = sub.id
    with factory() as s:
        ids = list(s.scalars(select(WebhookDelivery.id).where(WebhookDelivery.submission_id == sid)))
    return sid, ids


def _give_up(factory: sessionmaker[Session], ids: list[uuid.UUID]) -> None:
    with factory.begin() as s:
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .values(state="failed", attempts=8, error_code="HTTP_STATUS", last_status=500)
        )


def test_bulk_redeliver_takes_only_what_matches(factory: sessionmaker[Session]) -> None:
    sub_a, on_a = _delivered_events(factory, A, 3)
    sub_b, on_b = _delivered_events(factory, B, 2)
    _give_up(factory, on_a[:2] + on_b[:1])
    with factory.begin() as s:
        assert set(
            webhooks.redeliver_matching(s, failed_only=True, receiver="https://alice:s3cret@hooks.a.")
        ) == set(on_a[:2])
    with factory() as s:
        rows = {row.id: row for row in s.scalars(select(WebhookDelivery))}
    assert all(rows[i].state == "pending" and rows[i].attempts == 0 for i in on_a[:2])
    assert rows[on_b[0]].state == "failed"  # another receiver: untouched
    with factory.begin() as s:
        assert webhooks.redeliver_matching(s, failed_only=True, submission_id=sub_a) == []  # none failed now
        assert webhooks.redeliver_matching(s, failed_only=True) == [on_b[0]]
        assert webhooks.redeliver_matching(s, since=utcnow() + timedelta(hours=1)) == []
        assert len(webhooks.redeliver_matching(s, submission_id=sub_b, limit=1)) == 1
        assert webhooks.redeliver_matching(s, receiver="https://hooks.b.example/in%") == []  # LIKE escaped


def test_the_cli_redelivers_in_bulk_and_lists_without_credentials(
    factory: sessionmaker[Session],
    sqlite_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, on_a = _delivered_events(factory, A, 2)
    _give_up(factory, on_a)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSCAN_")}
    env["DFSCAN_DATABASE_URL"] = sqlite_url

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dfscan.cli.main", "webhooks", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    urls = {json.loads(line)["url"] for line in listed.stdout.splitlines()}
    assert urls == {"https://***@hooks.a.example/in"} and "s3cret" not in listed.stdout
    bulk = cli("redeliver", "--failed", "--receiver", "https://alice:s3cret@hooks.a.example/")
    assert bulk.returncode == 0, bulk.stderr
    assert "2 deliveries are pending again" in bulk.stderr
    assert set(bulk.stdout.split()) == {str(i) for i in on_a}
