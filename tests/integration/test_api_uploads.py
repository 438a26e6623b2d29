"""Uploads belong to the tenant that uploaded them (the ``uploads`` table): another tenant never sees them
in the console, even for its own verdict of the same bytes (same sha256); retention ends each tenant's hold
on its own row, and the bytes go only when no tenant's row holds them. Real server, worker and sweeper."""

# ruff: noqa: F811
from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db import uploads
from db.migrate import upgrade
from db.models import Tenant, Upload, VerdictRow, utcnow
from db.session import new_engine, new_session_factory
from db.tenants import create_tenant
from tests.fixtures.api import ApiServer, start_api
from tests.fixtures.corpus import make_image_bytes
from tests.fixtures.service import Service, service  # noqa: F401
from tests.integration.test_api_quotas import subprocess_sweep

pytestmark = pytest.mark.integration
CEILING = 180.0


@contextmanager
def origin(body: bytes) -> Iterator[str]:
    """An HTTP origin on 127.0.0.1 that answers every GET with ``body`` (a PNG); yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/same.png"
    finally:
        server.shutdown()
        server.server_close()


def signed_in(server: ApiServer, key: str) -> httpx.Client:
    """A console session of ``key`` (the sign-in form, with its CSRF token, as a browser sends it)."""
    http = httpx.Client(base_url=server.base_url, timeout=30.0)
    page = http.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    done = http.post("/ui/login", data={"api_key": key, "csrf_token": token.group(1)})
    assert done.status_code == 303 and done.headers["location"] == "/ui/queue", done.text[:500]
    return http


def judged(
    server: ApiServer, key: str, body: dict[str, object] | None = None, png: bytes | None = None
) -> str:
    """Submit one source (a URL in ``body`` or the upload ``png``); its job id once it is done."""
    with server.client(key) as http:
        if png is not None:
            accepted = http.post("/v1/scans", files=[("file", ("x.png", png, "image/png"))])
        else:
            accepted = http.post("/v1/scans", json=body)
        assert accepted.status_code == 202, accepted.text
        job_id = str(accepted.json()["jobs"][0]["job_id"])
        deadline = time.monotonic() + CEILING
        while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] != "done":
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
    return job_id


def test_a_tenant_sees_only_its_own_uploads_and_retention_ends_each_hold_on_its_own_row(
    service: Service, tmp_path: Path
) -> None:
    store = tmp_path / "up"
    env = {
        **service.env,
        "DFSCAN_CONSOLE_SECRET": "console-secret-for-the-uploads-test",
        "DFSCAN_UPLOAD_STORE": str(store),
        "DFSCAN_URL_ALLOWLIST": "127.0.0.1",
        "DFSCAN_UPLOAD_RETENTION_HOURS": "1",
    }
    service.env.update(env)
    server = start_api(env, service.database_url, tmp_path / "api.log")
    engine = new_engine(service.database_url)
    sessions = new_session_factory(engine)
    png = make_image_bytes("PNG", seed=7)
    try:
        service.start_worker()
        key_a = server.tenant("alpha", "submit,read,review")
        key_b = server.tenant("beta", "submit,read,review")
        uploaded_a = judged(server, key_a, png=png)
        with origin(png) as url:  # B judges the same bytes, fetched from a URL: same sha256, no upload
            fetched_b = judged(server, key_b, {"sources": [url]})
        with sessions() as s:
            shas = {
                str(job): s.scalar(select(VerdictRow.image_sha256).where(VerdictRow.job_id == job))
                for job in (uploaded_a, fetched_b)
            }
            tenants = {name: tenant_id for name, tenant_id in s.execute(select(Tenant.name, Tenant.id))}
        sha = shas[uploaded_a]
        assert sha is not None and shas[fetched_b] == sha
        assert (store / sha[:2] / sha).read_bytes() == png

        console_a, console_b = signed_in(server, key_a), signed_in(server, key_b)
        try:
            got = console_a.get(f"/ui/media/{uploaded_a}")
            assert got.status_code == 200 and got.content == png
            # B's own verdict names the sha256 of A's upload: B still gets nothing of A's.
            refused = console_b.get(f"/ui/media/{fetched_b}")
            assert refused.status_code == 404 and refused.content != png
            assert console_b.get(f"/ui/media/{uploaded_a}").status_code == 404  # A's job: not B's at all
            assert "no longer held" in console_b.get(f"/ui/jobs/{fetched_b}").text

            uploaded_b = judged(server, key_b, png=png)  # B uploads the same bytes: now B holds them too
            assert console_b.get(f"/ui/media/{uploaded_b}").content == png
            with sessions() as s:
                rows = s.execute(
                    select(Upload.tenant_id, Upload.sha256, Upload.size, Upload.media_kind)
                ).all()
            assert sorted(rows) == sorted(
                [(tenants["alpha"], sha, len(png), "image"), (tenants["beta"], sha, len(png), "image")]
            )
            assert len(list(store.glob("*/*"))) == 1  # stored once, held twice

            # Retention, row by row: A's hold ends first; the bytes stay for B.
            now = utcnow()
            with sessions.begin() as s:
                s.execute(update(Upload).where(Upload.tenant_id == tenants["alpha"]).values(expires_at=now))
                s.execute(
                    update(Upload)
                    .where(Upload.tenant_id == tenants["beta"])
                    .values(expires_at=now + timedelta(hours=1))
                )
            blob = store / sha[:2] / sha
            two_hours_ago = time.time() - 7200
            os.utime(blob, (two_hours_ago, two_hours_ago))  # the file is older than the retention
            assert subprocess_sweep(env).returncode == 0
            with sessions() as s:
                assert s.scalars(select(Upload.tenant_id)).all() == [tenants["beta"]]
            assert (store / sha[:2] / sha).exists(), "bytes another tenant still holds were deleted"
            assert console_a.get(f"/ui/media/{uploaded_a}").status_code == 404
            assert console_b.get(f"/ui/media/{uploaded_b}").content == png

            with sessions.begin() as s:  # B's hold ends too: now the bytes go
                s.execute(update(Upload).values(expires_at=utcnow()))
            assert subprocess_sweep(env).returncode == 0
            with sessions() as s:
                assert s.scalars(select(Upload.id)).all() == []
            assert list(store.glob("*/*")) == []
            assert console_b.get(f"/ui/media/{uploaded_b}").status_code == 404
            with server.client(key_b) as http:  # the verdicts stay
                assert http.get(f"/v1/jobs/{uploaded_b}").json()["status"] == "done"
        finally:
            console_a.close()
            console_b.close()
    finally:
        engine.dispose()
        server.stop()


@pytest.fixture
def factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(pg_url)
    engine = new_engine(pg_url)
    yield new_session_factory(engine)
    engine.dispose()


def test_uploading_again_pushes_a_hold_out_never_in_and_a_queued_job_keeps_its_hold(
    factory: sessionmaker[Session],
) -> None:
    from db import jobs
    from dfscan.uploads import upload_source

    sha = "ab" * 32
    now = utcnow()
    with factory.begin() as s:
        tenant = create_tenant(s, "acme").id
    for expires in (now + timedelta(hours=2), now + timedelta(hours=1)):  # the second is sooner: ignored
        with factory.begin() as s:
            uploads.hold(s, tenant, sha, size=10, media_kind="image", expires_at=expires)
    with factory() as s:
        (row,) = s.scalars(select(Upload)).all()
        assert row.expires_at == now + timedelta(hours=2)
        assert uploads.held_by(s, tenant, [sha, None, "cd" * 32]) == {sha}
        assert uploads.held_by(s, uuid.uuid4(), [sha]) == set()  # another tenant holds nothing
        assert uploads.held_by(s, tenant, [sha], now=now + timedelta(hours=3)) == set()  # expired
    with factory.begin() as s:
        uploads.hold(s, tenant, sha, size=10, media_kind="image", expires_at=None)  # retention off: for ever
        uploads.hold(s, tenant, sha, size=10, media_kind="image", expires_at=now)
    with factory() as s:
        assert s.scalars(select(Upload.expires_at)).one() is None

    # An expired hold whose bytes a queued job of the tenant still reads is kept, then goes once it ran.
    with factory.begin() as s:
        s.execute(update(Upload).values(expires_at=now - timedelta(minutes=1)))
        _, (job,), _ = jobs.create_submission(s, [upload_source(sha)], tenant_id=tenant)
    with factory.begin() as s:
        assert uploads.expire(s) == 0
        assert uploads.held_digests(s, [sha, "cd" * 32]) == {sha}
    with factory.begin() as s:
        assert jobs.finish_failed(s, job.id, code="CORRUPT_IMAGE", message="broken")
    with factory.begin() as s:
        assert uploads.expire(s) == 1
        assert uploads.held_digests(s, [sha]) == set()
