"""`dfscan api` against a real uvicorn server, Postgres and Redis: health, keys, scopes, revocation,
tenant isolation on the reading endpoints, and the one error body."""

from __future__ import annotations

import uuid

import pytest

from db import jobs
from db.session import new_engine, new_session_factory
from db.tenants import tenant_by_name
from tests.fixtures.api import ApiServer, api  # noqa: F401
from tests.fixtures.service import Service, service  # noqa: F401

pytestmark = pytest.mark.integration


def _error(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return dict(body["error"])


def _submit_rows(
    database_url: str, tenant: str | None, sources: list[str]
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    engine = new_engine(database_url)
    try:
        with new_session_factory(engine).begin() as session:
            kwargs = {} if tenant is None else {"tenant_id": tenant_by_name(session, tenant).id}
            sub, rows, _ = jobs.create_submission(session, sources, client_ref="ref-1", **kwargs)
            return sub.id, [row.id for row in rows]
    finally:
        engine.dispose()


def test_health_and_readiness(api: ApiServer) -> None:  # noqa: F811
    with api.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}


def test_keys_from_the_cli_scopes_and_revocation(api: ApiServer, service: Service) -> None:  # noqa: F811
    made = service.cli("tenants", "create", "acme")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("whsec_")  # the tenant's webhook secret, printed once
    created = service.cli("keys", "create", "--tenant", "acme", "--scopes", "submit,read")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("dfs_") and len(key) > 40
    submit_only = service.cli("keys", "create", "--tenant", "acme", "--scopes", "submit").stdout.strip()

    with api.client() as anonymous:
        assert _error(anonymous.get("/v1/results"))["code"] == "UNAUTHENTICATED"
    with api.client("dfs_00000000_not-a-key") as wrong:
        response = wrong.get("/v1/results")
        assert response.status_code == 401 and _error(response)["code"] == "UNAUTHENTICATED"
    with api.client(submit_only) as http:
        response = http.get("/v1/results")
        assert response.status_code == 403 and _error(response)["code"] == "FORBIDDEN"
    with api.client(key) as http:
        response = http.get("/v1/results")
        assert response.status_code == 200, response.text
        assert response.json() == {"results": [], "next_cursor": None}

    listed = service.cli("keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert key not in listed.stdout and key.split("_")[2] not in listed.stdout
    key_id = next(line.split()[0] for line in listed.stdout.splitlines() if key.split("_")[1] in line)
    revoked = service.cli("keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    with api.client(key) as http:
        response = http.get("/v1/results")
        assert response.status_code == 401 and _error(response)["code"] == "UNAUTHENTICATED"
    assert "revoked=" in service.cli("keys", "list", "--tenant", "acme").stdout
    # keys never in the server's log or in `dfscan config`
    assert key not in api.text() and submit_only not in api.text()
    assert key not in service.cli("config").stdout


def test_another_tenants_ids_are_not_found(api: ApiServer) -> None:  # noqa: F811
    key_a = api.tenant("tenant-a", "read")
    key_b = api.tenant("tenant-b", "read")
    sub_a, jobs_a = _submit_rows(api.database_url, "tenant-a", ["https://example.com/a.jpg"])
    sub_default, jobs_default = _submit_rows(api.database_url, None, ["https://example.com/d.jpg"])
    paths_a = [f"/v1/submissions/{sub_a}", f"/v1/submissions/{sub_a}/results", f"/v1/jobs/{jobs_a[0]}"]
    paths_default = [f"/v1/submissions/{sub_default}", f"/v1/jobs/{jobs_default[0]}"]
    with api.client(key_a) as a, api.client(key_b) as b:
        for path in paths_a:
            assert a.get(path).status_code == 200, path
            response = b.get(path)
            assert response.status_code == 404, path
            assert _error(response)["code"] == "UNKNOWN_ID"
        for path in paths_default:  # rows of ScanClient / `dfscan submit` belong to the default tenant
            assert a.get(path).status_code == 404, path
        # a cursor naming another tenant's job is unknown too
        response = b.get("/v1/results", params={"cursor": str(jobs_a[0])})
        assert response.status_code == 404 and _error(response)["code"] == "UNKNOWN_ID"
        listing_a = a.get("/v1/results").json()["results"]
        assert [row["job_id"] for row in listing_a] == [str(jobs_a[0])]
        assert b.get("/v1/results").json()["results"] == []
        job = a.get(f"/v1/jobs/{jobs_a[0]}").json()
        assert job["status"] == "queued" and job["source"] == "https://example.com/a.jpg"
        counts = a.get(f"/v1/submissions/{sub_a}").json()
        assert counts["counts"] == {"queued": 1, "running": 0, "done": 0, "failed": 0, "total": 1}
        assert counts["done"] is False


def test_one_error_body_for_what_the_framework_refuses(api: ApiServer) -> None:  # noqa: F811
    key = api.tenant("acme", "read")
    with api.client(key) as http:
        response = http.get("/v1/nowhere")
        assert response.status_code == 404 and _error(response)["code"] == "UNKNOWN_ENDPOINT"
        response = http.delete("/v1/results")
        assert response.status_code == 405 and _error(response)["code"] == "UNKNOWN_ENDPOINT"
        response = http.get("/v1/jobs/not-a-uuid")
        assert response.status_code == 422 and _error(response)["code"] == "BAD_ARGUMENT"
        response = http.get("/v1/results", params={"limit": "100000"})
        assert response.status_code == 422 and "limit" in _error(response)["message"]
        response = http.get("/v1/results", params={"label": "maybe"})
        assert response.status_code == 422
