"""Provenance and the second opinion in the database, on PostgreSQL and SQLite: stored beside the
verdict, read back by `dfscan results` and the duplicate cache, and sent in the job.completed webhook
body; the migration both ways."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, migrate, results
from db.models import VerdictRow, WebhookDelivery
from db.session import new_engine, new_session_factory
from dfscan.verdicts import Provenance, SecondOpinion, Verdict
from tests.fixtures.databases import pg_url, sqlite_url  # noqa: F401

pytestmark = pytest.mark.integration

PROVENANCE = Provenance(
    manifest=True,
    signature_valid=False,
    signature_errors=("assertion.dataHash.mismatch",),
    signer="dfscan test signer / dfscan tests",
    claim_generator="dfscan-test-generator 1.0",
    actions=("c2pa.created",),
    digital_source_type="trainedAlgorithmicMedia",
    declared_by="c2pa",
    declared_ai=True,
)


@pytest.fixture(params=["postgresql", "sqlite"])
def factory(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    migrate.upgrade(url)
    engine = new_engine(url)
    yield new_session_factory(engine)
    engine.dispose()


OPINION = SecondOpinion("second@sha256:ab", 0.86, None, "inconclusive", 0.5)


def _verdict(provenance: Provenance | None, second: SecondOpinion | None = None) -> Verdict:
    return Verdict(
        source="/x/a.jpg",
        status="done",
        label="real",
        fake_score=0.12,
        threshold=0.5,
        model_version="m1",
        image_sha256="ab" * 32,
        image_format="JPEG",
        n_bytes=10,
        width=64,
        height=48,
        judged_on="image",
        provenance=provenance,
        second_opinion=second,
    )


def test_provenance_is_stored_read_back_and_sent_in_the_webhook(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        _, rows, _ = jobs.create_submission(
            s,
            ["/x/a.jpg", "/x/b.jpg"],
            callback_url="http://127.0.0.1:9/hook",
            callback_events=["job.completed"],
        )
        ids = [r.id for r in rows]
    with factory.begin() as s:
        done = jobs.finish_done_many(
            s,
            [
                {"job_id": ids[0], **jobs.done_fields(_verdict(PROVENANCE, OPINION), worker="w")},
                {
                    "job_id": ids[1],
                    **jobs.done_fields(replace(_verdict(None), image_sha256="cd" * 32), worker="w"),
                },
            ],
        )
        assert done == set(ids)
    with factory.begin() as s:
        stored = {row.job_id: row.provenance for row in s.scalars(select(VerdictRow))}
        assert stored[ids[0]] == PROVENANCE.output() and stored[ids[1]] is None
        read = {row.job_id: row for row in results.results(s, job_ids=ids)}
        assert read[ids[0]].verdict.provenance == PROVENANCE
        assert read[ids[0]].verdict.fake_score == 0.12  # the score is the model's, whatever is declared
        assert read[ids[1]].verdict.provenance is None
        assert read[ids[0]].verdict.second_opinion == OPINION and read[ids[1]].verdict.second_opinion is None
        cached = jobs.cached_verdicts(s, ["ab" * 32, "cd" * 32], "m1")
        assert cached["ab" * 32].second_opinion == OPINION and cached["cd" * 32].second_opinion is None
        bodies = {d.job_id: json.loads(d.body) for d in s.scalars(select(WebhookDelivery))}
    assert bodies[ids[0]]["data"]["provenance"]["declared_ai"] is True
    assert bodies[ids[0]]["data"]["provenance"]["signature_errors"] == ["assertion.dataHash.mismatch"]
    assert bodies[ids[1]]["data"]["provenance"] is None
    assert bodies[ids[0]]["data"]["second_opinion"]["combined_label"] == "inconclusive"


def test_the_provenance_migration_goes_down_and_up(factory: sessionmaker[Session]) -> None:
    url = factory.kw["bind"].url.render_as_string(hide_password=False)
    migrate.downgrade(url, "0008")
    with factory() as s:
        assert "provenance" not in _columns(s)
    migrate.upgrade(url)
    with factory() as s:
        assert "provenance" in _columns(s)


def _columns(session: Session) -> set[str]:
    from sqlalchemy import inspect

    return {c["name"] for c in inspect(session.get_bind()).get_columns("verdicts")}
