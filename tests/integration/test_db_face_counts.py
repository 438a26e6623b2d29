"""Face counts in the database, on PostgreSQL and SQLite: a verdict's faces found, judged and skipped by
reason are stored, read back by `dfscan results`, answered by the duplicate cache and near-duplicate reuse, and carried in the
webhook payload; migration 0011 goes down and up with them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import hashes, jobs, migrate, registry, results, webhooks
from db.models import ModelVersion
from db.session import new_engine, new_session_factory
from tests.fixtures.databases import pg_url, sqlite_url  # noqa: F401
from tests.integration.test_db_faces import FACES_VERSION, SHA, verdict

pytestmark = pytest.mark.integration

COUNTS = {"faces_found": 25, "faces_judged": 2, "faces_skipped": {"too_small": 7, "over_cap": 16}}


@pytest.fixture(params=["postgresql", "sqlite"])
def factory(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    migrate.upgrade(url)
    engine = new_engine(url)
    yield new_session_factory(engine)
    engine.dispose()


def submit(factory: sessionmaker[Session], n: int) -> list[uuid.UUID]:
    with factory.begin() as s:
        _, rows, _ = jobs.create_submission(s, [f"/x/{k}.jpg" for k in range(n)])
        return [r.id for r in rows]


def test_counts_are_stored_shown_cached_and_sent(factory: sessionmaker[Session]) -> None:
    a, b = submit(factory, 2)
    plain = verdict(model_version="m1", judged_on="image", faces=[])
    with factory.begin() as s:
        assert jobs.finish_done_many(s, [{"job_id": a, **verdict(**COUNTS)}, {"job_id": b, **plain}]) == {
            a,
            b,
        }
    with factory.begin() as s:
        by_id = {r.job_id: r for r in results.results(s)}
        cached = jobs.cached_verdicts(s, [SHA], FACES_VERSION)[SHA]
        reused = hashes.stored_by_job(s, [a])[a]  # what a near-duplicate re-upload is answered with
        body = webhooks.result_json(by_id[a])
    out = by_id[a].output()
    assert {k: out[k] for k in COUNTS} == COUNTS
    assert {k: body[k] for k in COUNTS} == COUNTS  # the webhook's data is the result JSON
    for stored in (cached, reused):
        assert (stored.faces_found, stored.faces_judged, dict(stored.faces_skipped or {})) == tuple(
            COUNTS.values()
        )
    plain_out = by_id[b].output()
    assert (plain_out["faces_found"], plain_out["faces_judged"], plain_out["faces_skipped"]) == (
        None,
        None,
        None,
    )


def test_more_judged_than_found_is_refused(factory: sessionmaker[Session]) -> None:
    (a,) = submit(factory, 1)
    with pytest.raises(IntegrityError), factory.begin() as s:
        jobs.finish_done_many(s, [{"job_id": a, **verdict(faces_found=1, faces_judged=2, faces_skipped={})}])


def test_a_version_keeps_its_calibration(factory: sessionmaker[Session]) -> None:
    road = {"faces": "auto", "detector": "mtcnn", "margin": 0.3, "threshold": 0.42}
    with factory.begin() as s:
        registry.register_version(s, "v1", source="/m", threshold=0.42, calibration=road)
    with factory.begin() as s:
        assert s.scalars(select(ModelVersion)).one().calibration == road


def test_the_migration_goes_down_and_up_with_counts(factory: sessionmaker[Session]) -> None:
    (a,) = submit(factory, 1)
    with factory.begin() as s:
        jobs.finish_done_many(s, [{"job_id": a, **verdict(**COUNTS)}])
        url = s.get_bind().engine.url.render_as_string(hide_password=False)
    factory.kw["bind"].dispose()
    migrate.downgrade(url, "0008")
    engine = new_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT label FROM verdicts")).all() == [("fake",)]
    engine.dispose()
    migrate.upgrade(url)
    assert migrate.check_drift(url) == []
