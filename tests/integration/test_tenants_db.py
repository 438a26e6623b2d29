"""Migration 0009 and db/tenants.py on real PostgreSQL and SQLite: rows from before tenants belong to the
default tenant, idempotency keys are per tenant, keys are stored as digests and revocation holds."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from db import jobs, migrate
from db.models import ApiKey, ScanJob, Submission, Tenant
from db.session import new_engine, new_session_factory
from db.tenants import (
    create_key,
    create_tenant,
    find_key,
    hash_key,
    revoke_key,
    rotate_webhook_secret,
    webhook_secrets,
)
from dfscan.exceptions import BadArgumentError
from dfscan.tenants import DEFAULT_TENANT_ID, DEFAULT_TENANT_NAME
from tests.fixtures.databases import pg_url, sqlite_url  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_rows_written_before_tenants_belong_to_the_default_tenant(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    migrate.upgrade(url, "0008")
    engine = new_engine(url)
    sub_id, job_id = uuid.uuid4(), uuid.uuid4()
    with new_session_factory(engine).begin() as session:
        session.execute(
            text("INSERT INTO submissions (id, n_jobs, idempotency_key) VALUES (:id, 1, 'k1')"),
            {"id": sub_id.hex if backend == "sqlite" else str(sub_id)},
        )
        session.execute(
            text("INSERT INTO scan_jobs (id, submission_id, seq, source) VALUES (:id, :sub, 0, 'a.jpg')"),
            {
                "id": job_id.hex if backend == "sqlite" else str(job_id),
                "sub": sub_id.hex if backend == "sqlite" else str(sub_id),
            },
        )
    engine.dispose()
    migrate.upgrade(url)
    engine = new_engine(url)
    sessions = new_session_factory(engine)
    with sessions.begin() as session:
        default = session.get(Tenant, DEFAULT_TENANT_ID)
        assert default is not None and default.name == DEFAULT_TENANT_NAME
        assert session.get(Submission, sub_id).tenant_id == DEFAULT_TENANT_ID  # type: ignore[union-attr]
        assert session.get(ScanJob, job_id).tenant_id == DEFAULT_TENANT_ID  # type: ignore[union-attr]
        # a writer of the previous release (no tenant_id column in its INSERT) still writes default rows
        late = uuid.uuid4()
        session.execute(
            text("INSERT INTO submissions (id, n_jobs) VALUES (:id, 0)"),
            {"id": late.hex if backend == "sqlite" else str(late)},
        )
        assert session.get(Submission, late).tenant_id == DEFAULT_TENANT_ID  # type: ignore[union-attr]
        # idempotency keys are per tenant: another tenant may reuse 'k1'
        acme = create_tenant(session, "acme")
        sub, _, created = jobs.create_submission(session, ["b.jpg"], idempotency_key="k1", tenant_id=acme.id)
        assert created and sub.id != sub_id and sub.tenant_id == acme.id
        again, _, created = jobs.create_submission(session, ["a.jpg"], idempotency_key="k1")
        assert not created and again.id == sub_id
    engine.dispose()
    migrate.downgrade(url, "0008")  # and back: other tenants' idempotency keys give way
    migrate.upgrade(url)


def test_keys_are_digests_and_revocation_holds(pg_url: str) -> None:  # noqa: F811
    migrate.upgrade(pg_url)
    engine = new_engine(pg_url)
    sessions = new_session_factory(engine)
    with sessions.begin() as session:
        tenant = create_tenant(session, "acme")
        with pytest.raises(BadArgumentError):
            create_tenant(session, "acme")
        with pytest.raises(BadArgumentError):
            create_tenant(session, "Not A Name!")
        key = create_key(session, tenant.id, ["read", "submit"])
        assert key.scopes == ("submit", "read")
        with pytest.raises(BadArgumentError):
            create_key(session, tenant.id, ["admin"])
    with sessions.begin() as session:
        stored = session.scalars(select(ApiKey).where(ApiKey.id == key.id)).one()
        assert stored.key_hash == hash_key(key.raw) and key.raw not in (stored.key_hash, stored.prefix)
        owner = find_key(session, key.raw)
        assert owner is not None and owner.tenant_id == tenant.id and owner.scopes == {"submit", "read"}
        assert find_key(session, key.raw + "x") is None
        assert revoke_key(session, key.id) is True
        assert revoke_key(session, key.id) is False
    with sessions.begin() as session:
        assert find_key(session, key.raw) is None
    engine.dispose()


def test_rotating_the_webhook_secret_keeps_the_old_one_for_the_grace_period(pg_url: str) -> None:  # noqa: F811
    migrate.upgrade(pg_url)
    engine = new_engine(pg_url)
    with new_session_factory(engine).begin() as session:
        tenant = create_tenant(session, "acme")
        first = tenant.webhook_secret
        assert first and webhook_secrets(tenant) == [first]
        rotate_webhook_secret(session, "acme", grace=timedelta(hours=1))
        second = tenant.webhook_secret
        assert second not in (None, first)
        assert webhook_secrets(tenant) == [second, first]
        until = tenant.previous_webhook_secret_until
        assert until is not None
        assert webhook_secrets(tenant, now=until + timedelta(seconds=1)) == [second]
        rotate_webhook_secret(session, "acme", grace=timedelta(0))
        assert webhook_secrets(tenant) == [tenant.webhook_secret]
    engine.dispose()
