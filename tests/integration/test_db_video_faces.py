"""A video judged on faces in the database (migration 0006): each frame's faces in verdict_frames.faces,
written with the verdict and read back by ``results``, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db import jobs, migrate
from db.models import VerdictFrame
from db.results import results, verdict_frames
from db.session import new_engine, new_session_factory
from dfscan.verdicts import FaceVerdict, Frame, Verdict
from tests.fixtures.databases import pg_url, sqlite_url  # noqa: F401

pytestmark = pytest.mark.integration

FRAMES = (
    Frame(0.0, 0.9, (FaceVerdict((100, 40, 60, 70), 0.99, 0.9), FaceVerdict((10, 12, 40, 44), 0.95, 0.2))),
    Frame(0.5, 0.3),  # auto, no face: judged whole
    Frame(1.0, None),  # require, no face: not judged, no row
    Frame(1.5, 0.7, (FaceVerdict((104, 40, 60, 70), 0.98, 0.7),)),
)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_frames_keep_their_faces_and_results_show_them(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    migrate.upgrade(url)
    factory = new_session_factory(new_engine(url))
    with factory.begin() as s:
        sub, rows, _ = jobs.create_submission(s, ["clip.mp4"])
        sub_id, job_id = sub.id, rows[0].id
    verdict = Verdict(
        source="clip.mp4",
        status="done",
        label="fake",
        fake_score=0.7,
        threshold=0.5,
        model_version="m1+faces:auto:x",
        image_sha256="cd" * 32,
        image_format="MP4",
        n_bytes=1000,
        width=640,
        height=360,
        judged_on="faces",
        media="video",
        duration_s=2.0,
        peak_t=0.0,
        frames=FRAMES,
    )
    with factory.begin() as s:
        assert jobs.finish_done(s, job_id, **verdict.row(), worker="w1", frames=verdict.frame_rows()) is True
    with factory.begin() as s:
        stored = s.execute(select(VerdictFrame.t, VerdictFrame.faces).order_by(VerdictFrame.seq)).all()
        frames = verdict_frames(s, [job_id])[job_id]
        (row,) = results(s, submission_id=sub_id)
    assert [t for t, _ in stored] == [0.0, 0.5, 1.5]  # the unjudged frame has no row
    assert stored[1][1] is None  # judged whole: no faces
    with factory.begin() as s:  # SQL NULL, not the JSON value null
        assert s.scalar(select(VerdictFrame.seq).where(VerdictFrame.faces.is_(None))) == 1
    assert stored[0][1] == [
        {"box": [100, 40, 60, 70], "score": 0.99, "fake_score": 0.9},
        {"box": [10, 12, 40, 44], "score": 0.95, "fake_score": 0.2},
    ]
    assert [len(f) for f in frames] == [3, 2, 3]
    back = row.verdict
    assert back.frames == tuple(f for f in FRAMES if f.fake_score is not None)
    out = row.output()["frames"]
    assert out[0]["faces"][1] == {"box": [10, 12, 40, 44], "score": 0.95, "fake_score": 0.2, "label": "real"}
    assert out[1]["faces"] == [] and out[2]["faces"][0]["label"] == "fake"
