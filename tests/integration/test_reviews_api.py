"""Reviews without a browser: POST /v1/jobs/{id}/review (scope, tenant, validation), the review field of
GET /v1/jobs/{id}, the agreement page's numbers, and `dfscan reviews export` writing the layout `dfscan train`
reads from the reviewed uploads still held."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from db.models import Tenant
from db.session import new_engine, new_session_factory
from tests.fixtures.api import ApiServer, make_key, start_api
from tests.fixtures.console import Seeded, seed
from tests.fixtures.service import Service, service  # noqa: F401
from worker.training.data import load_labelled_data


@pytest.fixture
def server(service: Service, tmp_path: Path) -> Iterator[ApiServer]:  # noqa: F811
    media = tmp_path / "uploads"
    media.mkdir()
    env = {**service.env, "DFSCAN_CONSOLE_SECRET": "s" * 32, "DFSCAN_UPLOAD_STORE": str(media)}
    api = start_api(env, service.database_url, service.tmp / "api.log")
    api.env["media"] = str(media)
    try:
        yield api
    finally:
        api.stop()


def _seed(server: ApiServer, tenant: str, **kwargs: object) -> Seeded:
    make_key(server.database_url, tenant, "read")  # makes the tenant
    engine = new_engine(server.database_url)
    try:
        with new_session_factory(engine).begin() as s:
            tenant_id = s.execute(select(Tenant.id).where(Tenant.name == tenant)).scalar_one()
            return seed(s, tenant_id, Path(server.env["media"]), **kwargs)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def test_review_endpoint_scopes_tenants_history_and_the_job_result(server: ApiServer) -> None:
    acme = _seed(server, "acme", extra_images=6)
    theirs = _seed(server, "globex", extra_images=0)
    reviewer = make_key(server.database_url, "acme", "read,review")
    reader = make_key(server.database_url, "acme", "read")
    other = make_key(server.database_url, "globex", "read,review")
    job = acme.image_with_faces
    with server.client(reader) as api:
        assert api.get(f"/v1/jobs/{job}").json()["review"] is None
        denied = api.post(f"/v1/jobs/{job}/review", json={"decision": "fake"})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "FORBIDDEN"
    with server.client(reviewer) as api:
        first = api.post(f"/v1/jobs/{job}/review", json={"decision": "escalate", "note": "ask legal"})
        assert first.status_code == 201, first.text
        second = api.post(f"/v1/jobs/{job}/review", json={"decision": "real"})
        assert second.status_code == 201 and second.json()["decision"] == "real"
        got = api.get(f"/v1/jobs/{job}").json()["review"]
        assert got["decision"] == "real" and got["note"] is None and got["reviewer_key_id"]
        for body in (
            {"decision": "maybe"},
            {"decision": "fake", "extra": 1},
            {"decision": "fake", "note": "x" * 2001},
            {"decision": "fake", "note": "nul\u0000byte"},
        ):
            bad = api.post(f"/v1/jobs/{job}/review", json=body)
            assert bad.status_code in (400, 422) and "error" in bad.json(), body
        missing = api.post(f"/v1/jobs/{theirs.image_with_faces}/review", json={"decision": "fake"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "UNKNOWN_ID"
        assert api.post(f"/v1/jobs/{uuid.uuid4()}/review", json={"decision": "fake"}).status_code == 404
        # More decisions for the agreement page: model fake -> human real on two, agree on the rest.
        for job_id, decision in zip(
            acme.all_jobs[3:], ["real", "real", "fake", "fake", "not_applicable", "real"], strict=True
        ):
            assert api.post(f"/v1/jobs/{job_id}/review", json={"decision": decision}).status_code == 201
    with server.client(other) as api:
        assert api.post(f"/v1/jobs/{job}/review", json={"decision": "fake"}).status_code == 404
    with server.client() as anonymous:
        assert anonymous.post(f"/v1/jobs/{job}/review", json={"decision": "fake"}).status_code == 401

    # The agreement page, signed in through the form (CSRF token from the page, cookie from the answer).
    with httpx.Client(base_url=server.base_url) as browser:
        form = browser.get("/ui/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        signed_in = browser.post("/ui/login", data={"api_key": reviewer, "csrf_token": token.group(1)})
        assert signed_in.status_code == 303
        page = browser.get("/ui/agreement").text
    cells = dict(
        ((m, d), int(n)) for m, d, n in re.findall(r'data-model="(\w+)" data-decision="(\w+)">(\d+)<', page)
    )
    # The model said fake on the face image and on extras 0, 2, 4 (p 0.7), real on extras 1, 3, 5 (p 0.3).
    assert {k: n for k, n in cells.items() if n} == {
        ("fake", "real"): 2,  # the face image (0.91 -> real) and extra 0
        ("real", "real"): 2,  # extras 1 and 5
        ("fake", "fake"): 1,  # extra 2
        ("real", "fake"): 1,  # extra 3
        ("fake", "not_applicable"): 1,  # extra 4: counted beside the rate
    }
    assert re.search(r'class="rate">50\.0 %<', page)  # 3 disagreements of 6 fake/real decisions


def test_reviews_export_writes_the_train_layout_from_held_uploads(
    server: ApiServer,
    service: Service,  # noqa: F811
    tmp_path: Path,
) -> None:
    acme = _seed(server, "acme", extra_images=9)
    reviewer = make_key(server.database_url, "acme", "review")
    wanted = ["fake", "real", "real", *["fake", "real"] * 4, "escalate"]
    decisions = dict(zip(acme.all_jobs, wanted, strict=True))
    with server.client(reviewer) as api:
        for job_id, decision in decisions.items():
            assert api.post(f"/v1/jobs/{job_id}/review", json={"decision": decision}).status_code == 201
    out = tmp_path / "export"
    env = {**service.env, "DFSCAN_UPLOAD_STORE": server.env["media"]}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dfscan.cli.main",
            "reviews",
            "export",
            "--tenant",
            "acme",
            "--since",
            "1d",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {e["job_id"]: e["skipped"] for e in manifest["jobs"] if "skipped" in e}
    assert skipped == {str(acme.video): "media video", str(acme.all_jobs[-1]): "decision escalate"}
    written = {e["job_id"]: e["path"] for e in manifest["jobs"] if "path" in e}
    for job_id, path in written.items():
        assert path.startswith(decisions[uuid.UUID(job_id)] + "/")
        assert (out / path).is_file()
    assert manifest["written"] == {"fake": 5, "real": 5}
    assert sum(sum(c.values()) for c in load_labelled_data(out).counts().values()) == 10
