"""Video verdicts in the database (migration 0005): media, duration, peak time and per-frame scores,
written once with the verdict, read back by ``results``, guarded by constraints, on PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, migrate
from db.models import VerdictFrame, VerdictRow
from db.results import results, verdict_frames
from db.session import new_engine, new_session_factory
from tests.fixtures.databases import pg_url, sqlite_url  # noqa: F401

pytestmark = pytest.mark.integration

BASE: dict[str, Any] = dict(
    label="fake",
    fake_score=0.81,
    threshold=0.5,
    model_version="m1",
    image_sha256="ab" * 32,
    image_format=None,
    n_bytes=12345,
    width=64,
    height=48,
    fetch_ms=1.0,
    decode_ms=2.0,
    infer_ms=3.0,
    cached=False,
    worker="w1",
    media="image",
    duration_s=None,
    peak_t=None,
)
FRAMES = [(0.1, 0.2), (0.3, 0.9), (0.5, 0.81), (0.7, 0.85), (0.9, 0.1)]
VIDEO = dict(BASE, media="video", duration_s=1.0, peak_t=0.3, frames=FRAMES)


def _job(factory: sessionmaker[Session], source: str = "clip.mp4") -> tuple[uuid.UUID, uuid.UUID]:
    with factory.begin() as s:
        sub, rows, _ = jobs.create_submission(s, [source])
        return sub.id, rows[0].id


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_video_verdict_keeps_its_frames_and_a_redelivery_writes_nothing(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    migrate.upgrade(url)
    engine = new_engine(url)
    factory = new_session_factory(engine)
    sub_id, job_id = _job(factory)
    with factory.begin() as s:
        assert jobs.finish_done(s, job_id, **VIDEO) is True
    with factory.begin() as s:  # a redelivered message with other scores changes nothing
        assert jobs.finish_done(s, job_id, **dict(VIDEO, frames=[(0.0, 0.5)], peak_t=0.0)) is False
    with factory.begin() as s:
        assert verdict_frames(s, [job_id]) == {job_id: FRAMES}
        assert s.scalar(select(func.count()).select_from(VerdictFrame)) == len(FRAMES)
        (row,) = results(s, submission_id=sub_id)
    verdict = row.verdict
    assert (verdict.media, verdict.duration_s, verdict.peak_t, verdict.fake_score) == (
        "video",
        1.0,
        0.3,
        0.81,
    )
    assert row.output()["frames"] == [{"t": t, "fake_score": p, "faces": []} for t, p in FRAMES]
    assert verdict.frame_rows() == FRAMES

    # an image verdict written the old way is an image, with no timeline and no frames
    sub2, image_job = _job(factory, "a.png")
    with factory.begin() as s:
        old_way = {k: v for k, v in BASE.items() if k not in ("media", "duration_s", "peak_t")}
        assert jobs.finish_done(s, image_job, **old_way) is True
        (image_row,) = results(s, submission_id=sub2)
        assert verdict_frames(s, [image_job]) == {}
    image = image_row.verdict
    assert (image.media, image.duration_s, image.peak_t, image.frames) == ("image", None, None, None)
    assert image_row.output()["frames"] is None
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_constraints_guard_video_verdicts(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    migrate.upgrade(url)
    engine = new_engine(url)
    factory = new_session_factory(engine)
    _, job_id = _job(factory)
    fields = {k: v for k, v in BASE.items() if k not in ("media", "duration_s", "peak_t")}
    with pytest.raises(IntegrityError, match="image_has_no_timeline"), factory.begin() as s:
        s.add(VerdictRow(job_id=job_id, peak_t=1.0, **fields))
    with pytest.raises(IntegrityError, match="media_valid"), factory.begin() as s:
        s.add(VerdictRow(job_id=job_id, media="audio", **fields))
    with factory.begin() as s:
        assert jobs.finish_done(s, job_id, **VIDEO)
    with pytest.raises(IntegrityError, match="fake_score_range"), factory.begin() as s:
        s.add(VerdictFrame(job_id=job_id, seq=99, t=1.0, fake_score=1.5))
    with pytest.raises(IntegrityError, match="t_nonnegative"), factory.begin() as s:
        s.add(VerdictFrame(job_id=job_id, seq=99, t=-1.0, fake_score=0.5))
    with pytest.raises(IntegrityError), factory.begin() as s:  # frames belong to a verdict
        s.add(VerdictFrame(job_id=uuid.uuid4(), seq=0, t=0.0, fake_score=0.5))
    if backend == "postgresql":  # deleting the verdict deletes its frames
        with factory.begin() as s:
            s.execute(text("DELETE FROM verdicts WHERE job_id = :id"), {"id": job_id})
        with factory.begin() as s:
            assert verdict_frames(s, [job_id]) == {}
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_the_duplicate_cache_answers_a_video_with_its_timeline_under_its_own_version(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    migrate.upgrade(url)
    factory = new_session_factory(new_engine(url))
    _, job_id = _job(factory)
    version = "m1+video:frames=5:side=640"
    with factory.begin() as s:
        assert jobs.finish_done(s, job_id, **dict(VIDEO, model_version=version)) is True
    with factory() as s:
        cached = jobs.cached_verdicts(s, ["ab" * 32], version)
        assert jobs.cached_verdicts(s, ["ab" * 32], "m1+video:frames=32:side=640") == {}  # sampled otherwise
    stored = cached["ab" * 32]
    assert (stored.media, stored.fake_score, stored.duration_s, stored.peak_t) == ("video", 0.81, 1.0, 0.3)
    assert [(f.t, f.fake_score) for f in stored.frames] == FRAMES
