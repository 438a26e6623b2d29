"""The review queries on a migrated SQLite database: keyset pages neither skip nor repeat, filters, the
latest decision counts with history kept, neighbours for j/k, and every query stays inside its tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db import reviews
from db.migrate import upgrade
from db.session import new_engine, new_session_factory
from db.tenants import create_tenant
from tests.fixtures.console import Seeded, seed
from tests.fixtures.databases import sqlite_url  # noqa: F401


@pytest.fixture
def factory(sqlite_url: str) -> Iterator[sessionmaker[Session]]:  # noqa: F811
    upgrade(sqlite_url)
    engine = new_engine(sqlite_url)
    yield new_session_factory(engine)
    engine.dispose()


Tenants = tuple[uuid.UUID, Seeded, uuid.UUID, Seeded]


@pytest.fixture
def tenants(factory: sessionmaker[Session], tmp_path: Path) -> Tenants:
    with factory.begin() as s:
        acme, globex = create_tenant(s, "acme").id, create_tenant(s, "globex").id
        return (
            acme,
            seed(s, acme, tmp_path, extra_images=7),
            globex,
            seed(s, globex, tmp_path, extra_images=1),
        )


def test_keyset_pages_cover_the_queue_once_newest_first(
    factory: sessionmaker[Session], tenants: Tenants
) -> None:
    acme, mine, _, theirs = tenants
    seen: list[uuid.UUID] = []
    cursor = None
    with factory() as s:
        while True:
            page = reviews.queue(s, acme, reviews.QueueFilters(), limit=3, cursor=cursor)
            seen += [row.job_id for row in page.rows]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == mine.all_jobs  # seeded newest first
        assert not set(seen) & set(theirs.all_jobs)
        # Another tenant's job as a cursor starts from the top instead of leaking its position.
        assert (
            reviews.queue(s, acme, reviews.QueueFilters(), limit=2, cursor=theirs.video).rows[0].job_id
            == mine.all_jobs[0]
        )


def test_filters_and_review_state(factory: sessionmaker[Session], tenants: Tenants) -> None:
    acme, mine, globex, theirs = tenants
    with factory.begin() as s:
        first = reviews.record(
            s,
            tenant_id=acme,
            job_id=mine.image_without_faces,
            decision="escalate",
            note=" x ",
            api_key_id=None,
        )
        second = reviews.record(
            s, tenant_id=acme, job_id=mine.image_without_faces, decision="real", note="", api_key_id=None
        )
        assert first is not None and second is not None and first.note == "x" and second.note is None
        assert (
            reviews.record(
                s, tenant_id=globex, job_id=mine.video, decision="fake", note=None, api_key_id=None
            )
            is None
        )
        with pytest.raises(ValueError):
            reviews.record(s, tenant_id=acme, job_id=mine.video, decision="maybe", note=None, api_key_id=None)
    with factory() as s:

        def ids(**kw: str) -> list[uuid.UUID]:
            return [r.job_id for r in reviews.queue(s, acme, reviews.QueueFilters(**kw), limit=100).rows]

        assert ids(media="video") == [mine.video]
        assert set(ids(label="fake")) == {mine.image_with_faces, mine.video, *mine.all_jobs[3::2]}
        assert ids(label="near") == [mine.image_without_faces]  # 0.47 against 0.5
        assert ids(state="reviewed") == [mine.image_without_faces]
        assert mine.image_without_faces not in ids(state="unreviewed")
        assert ids(client_ref="nope") == []
        row = next(
            r
            for r in reviews.queue(s, acme, reviews.QueueFilters(), limit=100).rows
            if r.job_id == mine.image_without_faces
        )
        assert row.decision == "real"
        assert [e.decision for e in reviews.history(s, acme, mine.image_without_faces)] == [
            "real",
            "escalate",
        ]
        assert reviews.history(s, globex, mine.image_without_faces) == []
        assert reviews.latest(s, [mine.image_without_faces, mine.video]).keys() == {mine.image_without_faces}
        assert [d.job_id for d in reviews.decided(s, acme)] == [mine.image_without_faces]
        assert reviews.decided(s, globex) == []
        assert reviews.item(s, globex, mine.image_with_faces) is None
        assert reviews.item(s, acme, mine.image_with_faces) is not None
        assert (
            reviews.queue(s, globex, reviews.QueueFilters(), limit=100).rows[0].job_id == theirs.all_jobs[0]
        )


def test_neighbours_follow_the_filtered_queue(factory: sessionmaker[Session], tenants: Tenants) -> None:
    acme, mine, globex, _ = tenants
    with factory() as s:
        everything = reviews.QueueFilters()
        assert reviews.neighbours(s, acme, mine.all_jobs[0], everything) == (None, mine.all_jobs[1])
        assert reviews.neighbours(s, acme, mine.all_jobs[1], everything) == (
            mine.all_jobs[0],
            mine.all_jobs[2],
        )
        assert reviews.neighbours(s, acme, mine.all_jobs[-1], everything) == (mine.all_jobs[-2], None)
        fakes = reviews.QueueFilters(label="fake")
        assert reviews.neighbours(s, acme, mine.image_with_faces, fakes) == (None, mine.video)
        assert reviews.neighbours(s, globex, mine.all_jobs[1], everything) == (None, None)
