"""Faces through the service: a real worker judges a scene on its face and stores the face rows in
Postgres, exactly as `dfscan scan` stores them in SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import VerdictFace
from db.session import new_engine, new_session_factory
from producer.client import ScanClient
from tests.fixtures.faces import face_scene, matches
from tests.fixtures.service import Service
from tests.integration.test_service import settings_for, write_images

pytestmark = pytest.mark.integration


def test_a_worker_stores_each_judged_face_beside_the_verdict(service: Service) -> None:
    scene = face_scene(160, seed=4, size=(640, 480))
    path = service.images / "scene.jpg"
    scene.image.save(path, quality=92)
    (plain,) = write_images(service.images, 1)
    service.start_worker()
    sub = ScanClient(settings_for(service)).submit([str(path), str(plain)])
    sub.wait(120)
    face_row, plain_row = sub.results()
    assert face_row.status == "done" and face_row.verdict.judged_on == "faces", face_row
    (face,) = face_row.verdict.faces
    assert matches(face.box, scene.truth[0])
    assert face_row.fake_score == face.fake_score
    assert (
        plain_row.status == "done" and plain_row.verdict.judged_on == "image" and not plain_row.verdict.faces
    )
    with new_session_factory(new_engine(service.database_url))() as session:
        rows = session.scalars(select(VerdictFace).where(VerdictFace.job_id == face_row.job_id)).all()
    assert [(r.x, r.y, r.w, r.h) for r in rows] == [face.box]
    assert [r.fake_score for r in rows] == [face.fake_score]
