"""Webhooks without a network: signatures, the callback URL guard (decision functions only), the
foreign-message fields, and the outbox queries on a migrated SQLite database."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from db import jobs, webhooks
from db.migrate import upgrade
from db.models import WebhookDelivery, utcnow
from db.session import new_engine, new_session_factory
from dfscan.exceptions import BadMessageError, BlockedDestinationError, UnsupportedSourceError
from dfscan.settings import Settings
from dfscan.webhooks import check_callback_url, parse_events, signature_header, verify
from tests.fixtures.databases import sqlite_url  # noqa: F401
from tests.unit.test_db_queries import _verdict
from worker.delivery import callback_policy, post
from worker.messages import SourcesMessage, parse_scan_message

SECRET = "whsec-unit"

# --- signatures ------------------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"e1","type":"job.completed"}'
    header = signature_header(SECRET, body, timestamp=1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(SECRET, header, body, now=1_700_000_100)


def test_verification_fails_on_a_wrong_secret_a_changed_body_an_old_or_malformed_header() -> None:
    body = b'{"a":1}'
    header = signature_header(SECRET, body, timestamp=1_700_000_000)
    now = 1_700_000_010
    assert not verify("another-secret", header, body, now=now)
    assert not verify(SECRET, header, b'{"a":2}', now=now)
    assert not verify(SECRET, header, body, now=1_700_000_000 + 301)  # outside the 5-minute tolerance
    assert verify(SECRET, header, body, now=1_700_000_000 + 301, tolerance=600)
    for bad in ("", "v1=abc", "t=x,v1=abc", f"t=1700000000,v0={header.split('v1=')[1]}"):
        assert not verify(SECRET, bad, body, now=now), bad
    # a second v1 (a rotated secret) is accepted when one of them matches
    assert verify(SECRET, header.replace("t=", "t=", 1) + ",v1=00", body, now=now)


def test_events_are_chosen_by_name() -> None:
    assert parse_events(None) == ("job.completed", "submission.completed", "job.reviewed")
    assert parse_events("submission.completed") == ("submission.completed",)
    with pytest.raises(ValueError, match="unknown webhook events"):
        parse_events("job.done")


# --- the callback URL guard (decision functions; nothing is contacted) ---------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://localhost/hook",
        "http://2130706433/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://100.64.0.1/hook",
    ],
)
def test_internal_callbacks_are_refused_unless_allow_listed(url: str) -> None:
    with pytest.raises(BlockedDestinationError):
        check_callback_url(url)


def test_allow_listed_and_public_callbacks_pass_the_static_check() -> None:
    check_callback_url("http://127.0.0.1:8080/hook", ("127.0.0.1",))
    check_callback_url("http://10.0.0.5/hook", ("10.0.0.0/8",))
    check_callback_url("https://93.184.216.34/hook")
    check_callback_url("https://hooks.example.com/dfscan")  # a name: resolved and checked at delivery
    for bad in ("file:///etc/passwd", "gopher://x/", "ftp://example.com/", "hooks.example.com"):
        with pytest.raises(UnsupportedSourceError):
            check_callback_url(bad)


def test_post_refuses_a_blocked_destination_before_connecting() -> None:
    policy = callback_policy(Settings(webhook_allowlist=(), _env_file=None))  # type: ignore[call-arg]
    with pytest.raises(BlockedDestinationError):
        post("http://10.1.2.3/hook", b"{}", {}, policy)
    assert policy.max_redirects == 0 and policy.max_bytes == 65536


# --- foreign messages ------------------------------------------------------------------------------


def test_a_foreign_message_may_carry_a_callback() -> None:
    message = parse_scan_message(
        (),
        {
            "sources": ["https://example.com/a.jpg"],
            "callback_url": "https://hooks.example.com/x",
            "callback_events": ["job.completed"],
        },
    )
    assert isinstance(message, SourcesMessage)
    assert message.callback_url == "https://hooks.example.com/x"
    assert message.callback_events == ("job.completed",)
    plain = parse_scan_message((), {"sources": ["https://example.com/a.jpg"]})
    assert isinstance(plain, SourcesMessage) and plain.callback_url is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"callback_url": "gopher://x/"}, "http"),
        ({"callback_url": 42}, "must be a string"),
        ({"callback_url": "https://x/" + "a" * 3000}, "at most 2048"),
        ({"callback_url": "https://x/", "callback_events": ["job.done"]}, "unknown webhook events"),
        ({"callback_events": ["job.completed"]}, "needs a callback_url"),
    ],
)
def test_bad_callback_fields_are_bad_messages(fields: dict[str, object], message: str) -> None:
    with pytest.raises(BadMessageError, match=message):
        parse_scan_message((), {"sources": ["https://example.com/a.jpg"], **fields})


# --- the outbox --------------------------------------------------------------------------------------


@pytest.fixture
def factory(sqlite_url: str) -> Iterator[sessionmaker[Session]]:  # noqa: F811
    upgrade(sqlite_url)
    engine = new_engine(sqlite_url)
    yield new_session_factory(engine)
    engine.dispose()


def _submit(factory: sessionmaker[Session], n: int, **kwargs: object) -> list[uuid.UUID]:
    with factory.begin() as s:
        _, rows, _ = jobs.create_submission(s, [f"/img/{i}.jpg" for i in range(n)], **kwargs)  # type: ignore[arg-type]
        return [job.id for job in rows]


def _deliveries(factory: sessionmaker[Session]) -> list[WebhookDelivery]:
    with factory() as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def test_events_are_written_with_the_final_state_and_the_submission_event_once(
    factory: sessionmaker[Session],
) -> None:
    ids = _submit(factory, 3, callback_url="http://127.0.0.1/h", client_ref="post-9")
    with factory.begin() as s:
        jobs.claim_jobs(s, ids, worker="w", lease_seconds=60, max_attempts=3)
        assert jobs.finish_done_many(s, [{"job_id": ids[0], **_verdict()}]) == {ids[0]}
        assert jobs.finish_failed(s, ids[1], code="CORRUPT_IMAGE", message="broken")
    rows = _deliveries(factory)
    assert sorted(r.event for r in rows) == ["job.completed", "job.completed"]
    with factory.begin() as s:
        assert not jobs.finish_failed(s, ids[1], code="CORRUPT_IMAGE", message="again")  # already final
        jobs.finish_done_many(s, [{"job_id": ids[2], **_verdict(image_sha256="cd" * 32)}])
    rows = _deliveries(factory)
    assert [r.event for r in rows].count("job.completed") == 3
    (end,) = [r for r in rows if r.event == "submission.completed"]
    body = json.loads(end.body)
    assert body["id"] == str(end.id) and body["type"] == "submission.completed"
    assert body["data"] == {
        "submission_id": str(end.submission_id),
        "client_ref": "post-9",
        "total": 3,
        "done": 2,
        "failed": 1,
        "n_jobs": 3,
    }
    failed = next(json.loads(r.body)["data"] for r in rows if r.job_id == ids[1])
    assert (
        failed["status"] == "failed" and failed["error_code"] == "CORRUPT_IMAGE" and failed["label"] is None
    )
    # a write of the same event again is a no-op (dedupe_key)
    with factory.begin() as s:
        assert webhooks.record_final(s, ids) >= 1
    assert len(_deliveries(factory)) == 4


def test_no_callback_no_events_and_max_attempts_failures_notify(factory: sessionmaker[Session]) -> None:
    quiet = _submit(factory, 1)
    loud = _submit(factory, 1, callback_url="http://127.0.0.1/h", callback_events=["submission.completed"])
    with factory.begin() as s:
        jobs.finish_failed(s, quiet[0], code="BAD_MESSAGE", message="x")
        # The first claim's lease has run out (a live lease is left alone): the next claim is over the limit.
        jobs.claim_jobs(s, loud, worker="w", lease_seconds=0, max_attempts=1)
        assert jobs.claim_jobs(s, loud, worker="w", lease_seconds=60, max_attempts=1) == {}  # MAX_ATTEMPTS
    (only,) = _deliveries(factory)
    assert only.event == "submission.completed" and json.loads(only.body)["data"]["failed"] == 1


RX = "http://127.0.0.1:80"  # receiver_of("http://127.0.0.1/h")


def test_claims_leases_retries_give_up_and_redeliver(factory: sessionmaker[Session]) -> None:
    ids = _submit(factory, 1, callback_url="http://127.0.0.1/h", callback_events=["job.completed"])
    with factory.begin() as s:
        jobs.finish_failed(s, ids[0], code="CORRUPT_IMAGE", message="broken")
    with factory.begin() as s:
        assert webhooks.due_receivers(s) == [RX]
        (due,) = webhooks.claim_due(s, limit=10, lease_seconds=30, receiver=RX)
        assert due.attempts == 1 and due.event == "job.completed"
        assert webhooks.claim_due(s, limit=10, lease_seconds=30, receiver=RX) == []  # leased
    later = utcnow() + timedelta(seconds=31)
    with factory.begin() as s:  # the attempt never reported (a killed process): due again
        (again,) = webhooks.claim_due(s, limit=10, lease_seconds=30, receiver=RX, now=later)
        assert again.id == due.id and again.attempts == 2 and again.body == due.body
        assert again.token != due.token
        # the first claim lost the row: its outcome is not recorded (nor its attempt counted again)
        assert webhooks.settle(s, [webhooks.Outcome(due.id, 503, "HTTP_STATUS", "503", 5, due.token)]) == 0
        assert webhooks.settle(s, [webhooks.Outcome(due.id, 503, "HTTP_STATUS", "503", 5, again.token)]) == 1
    (row,) = _deliveries(factory)
    assert (row.state, row.error_code, row.last_status, row.attempts) == ("pending", "HTTP_STATUS", 503, 2)
    with factory.begin() as s:
        (third,) = webhooks.claim_due(
            s, limit=10, lease_seconds=30, receiver=RX, now=later + timedelta(seconds=6)
        )
        outcome = webhooks.Outcome(due.id, None, "FETCH_FAILED", "refused", None, third.token)
        assert webhooks.settle(s, [outcome]) == 1
        assert [d.state for d in webhooks.list_deliveries(s, failed_only=True)] == ["failed"]
        assert webhooks.redeliver(s, due.id)
        assert not webhooks.redeliver(s, uuid.uuid4())
    with factory.begin() as s:
        (fresh,) = webhooks.claim_due(s, limit=10, lease_seconds=30, receiver=RX)
        assert fresh.attempts == 1
        assert webhooks.settle(s, [webhooks.Outcome(fresh.id, 204, token=fresh.token)]) == 1
        assert webhooks.settle(s, [webhooks.Outcome(fresh.id, 204, token=fresh.token)]) == 0  # settled
    (row,) = _deliveries(factory)
    assert row.state == "delivered" and row.delivered_at is not None and row.error_code is None


def test_a_round_of_outcomes_is_settled_in_a_bounded_number_of_statements(
    factory: sessionmaker[Session],
) -> None:
    ids = _submit(factory, 40, callback_url="http://127.0.0.1/h", callback_events=["job.completed"])
    with factory.begin() as s:
        for job_id in ids:
            jobs.finish_failed(s, job_id, code="CORRUPT_IMAGE", message="broken")
    with factory.begin() as s:
        due = webhooks.claim_due(s, limit=100, lease_seconds=30, receiver=RX)
    assert len(due) == 40
    token = due[0].token
    outcomes = [webhooks.Outcome(d.id, 200, token=token) for d in due[:30]]
    outcomes += [webhooks.Outcome(due[30].id, 204, token=token)]
    outcomes += [webhooks.Outcome(d.id, 503, "HTTP_STATUS", "503", 60, token) for d in due[31:38]]
    outcomes += [
        webhooks.Outcome(d.id, None, "BLOCKED_DESTINATION", "internal", token=token) for d in due[38:]
    ]
    statements: list[str] = []
    engine = factory.kw["bind"]
    listen = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listen)
    try:
        with factory.begin() as s:
            assert webhooks.settle(s, outcomes) == 40
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    # one UPDATE per distinct 2xx status, one executemany for the failures (was: one per row)
    assert len([sql for sql in statements if sql.lstrip().upper().startswith("UPDATE")]) == 3
    rows = {row.id: row for row in _deliveries(factory)}
    assert {rows[d.id].last_status for d in due[:31]} == {200, 204}
    assert all(rows[d.id].state == "delivered" and rows[d.id].delivered_at for d in due[:31])
    retrying = [rows[d.id] for d in due[31:38]]
    assert {(r.state, r.error_code, r.last_status) for r in retrying} == {("pending", "HTTP_STATUS", 503)}
    assert all(r.next_attempt_at > utcnow() + timedelta(seconds=50) for r in retrying)
    given_up = [rows[d.id] for d in due[38:]]
    assert {(r.state, r.error_code, r.last_status) for r in given_up} == {
        ("failed", "BLOCKED_DESTINATION", None)
    }
    with factory.begin() as s:  # every claim was settled: its token is spent, nothing changes again
        assert webhooks.settle(s, outcomes) == 0


def test_retry_delay_doubles_to_its_cap() -> None:
    delays = [webhooks.retry_delay(n, base=5, cap=900) for n in range(1, 12)]
    assert 4 <= delays[0] <= 6 and 8 <= delays[1] <= 12
    assert all(720 <= d <= 1080 for d in delays[-3:])


# --- the manual's verification snippets (docs/webhooks.md) ----------------------------------------------


def readme_block(language: str, marker: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S):
        if marker in block:
            return str(block)
    raise AssertionError(f"docs/webhooks.md has no {language} block containing {marker!r}")


def test_the_readme_python_snippet_verifies_dfscan_signatures() -> None:
    namespace: dict[str, object] = {}
    exec(readme_block("python", "def verify(secret: str, header: str"), namespace)  # noqa: S102
    snippet = namespace["verify"]
    assert callable(snippet)
    body = b'{"id":"e","type":"job.completed"}'
    header = signature_header(SECRET, body)
    assert snippet(SECRET, header, body)
    assert not snippet("wrong", header, body)
    assert not snippet(SECRET, header, body + b"x")
    assert not snippet(SECRET, signature_header(SECRET, body, timestamp=1), body)


def test_the_readme_node_snippet_verifies_dfscan_signatures() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    body = '{"id":"e","type":"job.completed"}'
    header = signature_header(SECRET, body.encode())
    script = readme_block("js", "function verify(") + (
        "\nconst [s, h, b] = process.argv.slice(1);"
        "\nconsole.log(JSON.stringify([verify(s, h, Buffer.from(b)), verify('wrong', h, Buffer.from(b)),"
        " verify(s, h, Buffer.from(b + 'x')), verify(s, 't=1,v1=zz', Buffer.from(b))]));"
    )
    out = subprocess.run(
        [node, "-e", script, SECRET, header, body], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [True, False, False, False]


def test_the_event_shows_the_final_state_even_when_the_session_holds_the_job(
    factory: sessionmaker[Session],
) -> None:
    ids = _submit(factory, 1, callback_url="http://127.0.0.1/h", callback_events=["job.completed"])
    with factory.begin() as s:  # dfscan scan's pattern: claim_job loads the row into the session
        held = jobs.claim_job(s, ids[0], worker="w", lease_seconds=60, max_attempts=3)
        assert held is not None and held.state == "running"
        jobs.finish_failed(s, ids[0], code="CORRUPT_IMAGE", message="broken")
        assert held.state == "failed"  # refreshed by the event's read
    (row,) = _deliveries(factory)
    assert json.loads(row.body)["data"]["status"] == "failed"
