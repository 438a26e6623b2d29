"""One callback-URL check at every intake (`dfscan submit`, ScanClient, foreign Celery messages), the
same code and message everywhere, and URL credentials masked where task arguments are shown."""

from __future__ import annotations

import pytest

from dfscan.exceptions import BadMessageError, DfscanError
from dfscan.settings import Settings
from dfscan.webhooks import check_callback_url
from producer.client import ScanClient
from worker.messages import SourcesMessage, parse_scan_message


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://hooks.example.com/" + "a" * 2100, "CALLBACK_URL_TOO_LONG"),
        ("https://hooks.example.com/x\r\nX-Injected: 1", "UNSUPPORTED_SOURCE"),
        ("https://hooks.example.com/x\n", "UNSUPPORTED_SOURCE"),
        ("ftp://hooks.example.com/x", "UNSUPPORTED_SOURCE"),
        ("https:///nohost", "UNSUPPORTED_SOURCE"),
        ("http://127.0.0.1:8080/x", "BLOCKED_DESTINATION"),
        ("http://0x7f000001/x", "BLOCKED_DESTINATION"),
        ("http://[::ffff:10.0.0.1]/x", "BLOCKED_DESTINATION"),
        ("http://169.254.169.254/latest/meta-data", "BLOCKED_DESTINATION"),
        ("http://localhost/x", "BLOCKED_DESTINATION"),
    ],
)
def test_every_intake_refuses_a_callback_url_with_the_same_code(url: str, code: str) -> None:
    from dfscan.urlguard import check_callback_url as guard

    with pytest.raises(DfscanError) as by_guard:
        guard(url)
    assert by_guard.value.code == code
    with pytest.raises(BadMessageError) as by_message:  # a foreign Celery message
        parse_scan_message((), {"sources": ["https://example.com/a.jpg"], "callback_url": url})
    assert (by_message.value.code, by_message.value.message) == (code, by_guard.value.message)
    with pytest.raises(DfscanError) as by_producer:  # ScanClient.submit: checked before any write
        client = object.__new__(ScanClient)
        client.settings = Settings(_env_file=None)  # type: ignore[call-arg]
        client.submit(["https://example.com/a.jpg"], callback_url=url)
    assert (by_producer.value.code, by_producer.value.message) == (code, by_guard.value.message)


def test_the_webhook_allowlist_opens_an_internal_callback_at_every_intake() -> None:
    url = "http://10.1.2.3/hook"
    message = parse_scan_message(
        (),
        {"sources": ["https://example.com/a.jpg"], "callback_url": url},
        callback_allowlist=("10.0.0.0/8",),
    )
    assert isinstance(message, SourcesMessage) and message.callback_url == url
    check_callback_url("https://hooks.example.com/" + "a" * 2000)  # under the cap: accepted


def test_url_credentials_are_masked_in_task_arguments_shown_to_flower() -> None:
    from dfscan.urlguard import mask_url_credentials
    from worker.tasks import _masked

    kwargs = {
        "sources": ["https://example.com/a.jpg"],
        "callback_url": "https://bob:hunter2@hooks.example.com/x",
    }
    shown = _masked(kwargs)
    assert shown["callback_url"] == "https://***@hooks.example.com/x" and "hunter2" not in repr(shown)
    assert shown["sources"] == ["https://example.com/a.jpg"]
    assert "hunter2" not in mask_url_credentials(repr(kwargs)) and "bob" not in mask_url_credentials(
        repr(kwargs)
    )
    assert mask_url_credentials("see https://example.com/a@b.jpg") == "see https://example.com/a@b.jpg"


def test_the_task_request_shows_flower_masked_arguments() -> None:
    """What Flower shows (task-received events carry ``kwargsrepr``; ``inspect active`` calls info())."""
    from unittest.mock import Mock

    from kombu import Message
    from kombu.serialization import dumps

    from worker.tasks import MaskedRequest, scan

    kwargs = {
        "sources": ["https://example.com/a.jpg"],
        "callback_url": "https://bob:hunter2@hooks.example.com/x",
    }
    task_message = scan.app.amqp.as_task_v2("task-1", scan.name, (), kwargs)
    content_type, encoding, body = dumps(task_message.body, serializer="json")
    message = Message(
        body=body,
        headers=task_message.headers,
        content_type=content_type,
        content_encoding=encoding,
        channel=Mock(),
    )
    assert "hunter2" in task_message.headers["kwargsrepr"]  # what a Python Celery client puts in the message
    request = MaskedRequest(message, app=scan.app, task=scan)
    assert scan.Request is MaskedRequest
    assert "hunter2" not in request.kwargsrepr and "https://***@hooks.example.com/x" in request.kwargsrepr
    for safe in (False, True):
        shown = request.info(safe=safe)
        assert "hunter2" not in repr(shown["kwargs"]) and "bob" not in repr(shown["kwargs"])
    assert request.kwargs["callback_url"] == kwargs["callback_url"]  # the task itself gets the real URL
