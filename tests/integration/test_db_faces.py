"""Faces in the database, on PostgreSQL and SQLite: one row per judged face beside the verdict, the
not_applicable verdict, the duplicate cache kept apart by model version, and the migration both ways."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, migrate, results
from db.models import VerdictFace, VerdictRow
from db.session import new_engine, new_session_factory
from tests.fixtures.databases import pg_url, sqlite_url  # noqa: F401

pytestmark = pytest.mark.integration

SHA = "cd" * 32
FACES_VERSION = "m1+faces:mtcnn(side=640)"
FACES = [
    {"box": (100, 80, 120, 150), "score": 0.999, "fake_score": 0.91},
    {"box": (400, 90, 60, 70), "score": 0.98, "fake_score": 0.2},
]


@pytest.fixture(params=["postgresql", "sqlite"])
def factory(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    migrate.upgrade(url)
    engine = new_engine(url)
    yield new_session_factory(engine)
    engine.dispose()


def verdict(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        label="fake",
        fake_score=0.91,
        threshold=0.5,
        model_version=FACES_VERSION,
        image_sha256=SHA,
        image_format="PNG",
        n_bytes=10,
        width=640,
        height=480,
        fetch_ms=1.0,
        decode_ms=1.0,
        infer_ms=1.0,
        cached=False,
        worker="w1",
        judged_on="faces",
        faces=FACES,
    )
    values.update(overrides)
    return values


def submit(factory: sessionmaker[Session], n: int) -> list[uuid.UUID]:
    with factory.begin() as s:
        _, rows, _ = jobs.create_submission(s, [f"/x/{k}.jpg" for k in range(n)])
        return [r.id for r in rows]


def test_a_faces_verdict_stores_one_row_per_face_once(factory: sessionmaker[Session]) -> None:
    (job_id,) = submit(factory, 1)
    with factory.begin() as s:
        assert jobs.finish_done_many(s, [{"job_id": job_id, **verdict()}]) == {job_id}
    with factory.begin() as s:  # a redelivery writes nothing
        assert jobs.finish_done_many(s, [{"job_id": job_id, **verdict(faces=FACES[:1])}]) == set()
    with factory.begin() as s:
        row = s.scalars(select(VerdictRow)).one()
        assert (row.judged_on, row.label, row.fake_score) == ("faces", "fake", 0.91)
        faces = s.scalars(select(VerdictFace).order_by(VerdictFace.seq)).all()
        assert [(f.seq, f.x, f.y, f.w, f.h, f.score, f.fake_score) for f in faces] == [
            (0, 100, 80, 120, 150, 0.999, 0.91),
            (1, 400, 90, 60, 70, 0.98, 0.2),
        ]
        (result,) = results.results(s)
    assert result.verdict.judged_on == "faces"
    assert result.output()["faces"] == [
        {"box": [100, 80, 120, 150], "score": 0.999, "fake_score": 0.91, "label": "fake"},
        {"box": [400, 90, 60, 70], "score": 0.98, "fake_score": 0.2, "label": "real"},
    ]


def test_whole_image_verdicts_default_to_judged_on_image_without_faces(
    factory: sessionmaker[Session],
) -> None:
    (job_id,) = submit(factory, 1)
    plain = {k: v for k, v in verdict(model_version="m1").items() if k not in ("judged_on", "faces")}
    with factory.begin() as s:
        assert jobs.finish_done(s, job_id, **plain)
    with factory.begin() as s:
        (result,) = results.results(s)
        assert (result.verdict.judged_on, result.output()["faces"]) == ("image", [])
        assert s.scalar(select(func.count()).select_from(VerdictFace)) == 0


def test_not_applicable_has_no_score_and_the_schema_holds_it(factory: sessionmaker[Session]) -> None:
    a, b, c = submit(factory, 3)
    with factory.begin() as s:
        na = verdict(label="not_applicable", fake_score=None, judged_on="image", faces=[])
        assert jobs.finish_done_many(s, [{"job_id": a, **na}]) == {a}
    with factory.begin() as s:
        (row, *_) = results.results(s)
        assert (row.status, row.label, row.fake_score) == ("done", "not_applicable", None)
    bad = [
        verdict(label="not_applicable", fake_score=0.3),  # not_applicable with a score
        verdict(label="fake", fake_score=None),  # a verdict without one
        verdict(judged_on="crops"),
    ]
    for values in bad:
        with pytest.raises(IntegrityError), factory.begin() as s:
            jobs.finish_done_many(s, [{"job_id": b, **values}])
    for face in (
        {"box": (0, 0, 0, 10), "score": 0.9, "fake_score": 0.5},
        {"box": (0, 0, 5, 5), "score": 0.9, "fake_score": 1.5},
    ):
        with pytest.raises(IntegrityError), factory.begin() as s:
            jobs.finish_done_many(s, [{"job_id": c, **verdict(faces=[face])}])


def test_the_cache_never_answers_faces_with_a_whole_image_score_or_the_reverse(
    factory: sessionmaker[Session],
) -> None:
    a, b = submit(factory, 2)
    plain = verdict(model_version="m1", label="real", fake_score=0.2, judged_on="image", faces=[])
    with factory.begin() as s:
        jobs.finish_done_many(s, [{"job_id": a, **plain}, {"job_id": b, **verdict()}])
    with factory.begin() as s:
        image = jobs.cached_verdicts(s, [SHA], "m1")[SHA]
        faces = jobs.cached_verdicts(s, [SHA], FACES_VERSION)[SHA]
        assert jobs.cached_verdicts(s, [SHA], "m1+faces:other-detector") == {}
    assert (image.fake_score, image.judged_on, image.faces) == (0.2, "image", ())
    assert (faces.fake_score, faces.judged_on) == (0.91, "faces")
    assert [f.box for f in faces.faces] == [(100, 80, 120, 150), (400, 90, 60, 70)]


def test_the_migration_goes_down_and_up_with_data(factory: sessionmaker[Session]) -> None:
    a, b = submit(factory, 2)
    with factory.begin() as s:
        jobs.finish_done_many(
            s,
            [
                {"job_id": a, **verdict()},
                {"job_id": b, **verdict(label="not_applicable", fake_score=None, faces=[])},
            ],
        )
        url = s.get_bind().engine.url.render_as_string(hide_password=False)
    factory.kw["bind"].dispose()
    migrate.downgrade(url, "0002")
    engine = new_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT label, fake_score FROM verdicts")).all() == [("fake", 0.91)]
    engine.dispose()
    migrate.upgrade(url)
    assert migrate.check_drift(url) == []
