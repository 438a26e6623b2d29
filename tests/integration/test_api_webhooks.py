"""Signed webhooks per tenant through the real server, worker and delivery loop: a tenant's events are
signed with its own secret (not DFSCAN_WEBHOOK_SECRET); after `dfscan tenants rotate-secret` both the new
and the previous secret sign until the grace period ends; with no grace only the new one does."""

# ruff: noqa: F811
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from db.session import new_engine, new_session_factory
from db.tenants import tenant_by_name
from dfscan.webhooks import SIGNATURE_HEADER, verify
from tests.fixtures.api import start_api
from tests.fixtures.corpus import make_image_bytes
from tests.fixtures.service import Service, service  # noqa: F401
from tests.fixtures.webhook_receiver import Receiver

pytestmark = pytest.mark.integration
GLOBAL_SECRET = "global-secret-for-the-default-tenant"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    rx.start()
    try:
        yield rx
    finally:
        rx.release()
        rx.stop()


def _secret(database_url: str, tenant: str) -> str:
    engine = new_engine(database_url)
    try:
        with new_session_factory(engine)() as session:
            return str(tenant_by_name(session, tenant).webhook_secret)
    finally:
        engine.dispose()


def _headers_for(receiver: Receiver, submission_id: str, timeout: float = 120.0) -> list[tuple[str, bytes]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [
            (r.headers[SIGNATURE_HEADER], r.body)
            for r in receiver.events()
            if r.event.get("type") == "submission.completed"
            and r.event["data"]["submission_id"] == submission_id
        ]
        if got:
            return got
        time.sleep(0.2)
    seen = [r.event for r in receiver.events()]
    raise AssertionError(f"no submission.completed for {submission_id} after {timeout}s: {seen}")


def test_tenant_secrets_sign_webhooks_and_rotation_sends_both(service: Service, receiver: Receiver) -> None:
    env = {
        **service.env,
        "DFSCAN_UPLOAD_STORE": str(service.tmp / "up"),
        "DFSCAN_WEBHOOK_SECRET": GLOBAL_SECRET,
        "DFSCAN_WEBHOOK_ALLOWLIST": "127.0.0.1",
        "DFSCAN_WEBHOOK_RETRY_BASE": "0.5",
        "DFSCAN_WEBHOOK_RETRY_MAX": "2",
    }
    service.env.update(env)
    server = start_api(env, service.database_url, service.tmp / "api.log")
    try:
        service.start_worker("--sweeper")
        key = server.tenant("acme", "submit,read")
        first_secret = _secret(service.database_url, "acme")

        def scan(seed: int) -> str:
            with server.client(key) as http:
                response = http.post(
                    "/v1/scans",
                    files=[("file", (f"{seed}.png", make_image_bytes("PNG", seed=seed), "image/png"))],
                    data={"callback_url": receiver.url, "events": "submission.completed"},
                )
                assert response.status_code == 202, response.text
                return str(response.json()["submission_id"])

        (header, body), *_ = _headers_for(receiver, scan(1))
        assert verify(first_secret, header, body)
        assert not verify(GLOBAL_SECRET, header, body)
        assert header.count("v1=") == 1

        rotated = service.cli("tenants", "rotate-secret", "acme", "--grace-hours", "1")
        assert rotated.returncode == 0, rotated.stderr
        second_secret = rotated.stdout.strip()
        assert second_secret == _secret(service.database_url, "acme") != first_secret
        (header, body), *_ = _headers_for(receiver, scan(2))
        assert header.count("v1=") == 2
        assert verify(second_secret, header, body) and verify(first_secret, header, body)

        rotated = service.cli("tenants", "rotate-secret", "acme", "--grace-hours", "0")
        assert rotated.returncode == 0, rotated.stderr
        third_secret = rotated.stdout.strip()
        (header, body), *_ = _headers_for(receiver, scan(3))
        assert verify(third_secret, header, body)
        assert not verify(second_secret, header, body) and not verify(first_secret, header, body)
    finally:
        server.stop()
