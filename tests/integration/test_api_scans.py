"""POST /v1/scans through a real uvicorn server, Postgres, Redis and a real worker: uploads and URLs
judged end to end, intake refusals (paths, internal URLs, callbacks, formats, sizes), idempotency per
tenant, and tenant isolation on the ids the API hands out."""

# ruff: noqa: F811
from __future__ import annotations

import io
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from db.models import ScanJob
from db.session import new_engine, new_session_factory
from dfscan.exceptions import BadOptionError
from producer.client import ScanClient
from tests.fixtures.api import ApiServer, api, start_api  # noqa: F401
from tests.fixtures.corpus import make_image_bytes
from tests.fixtures.faces import face_scene
from tests.fixtures.http_server import serve_http
from tests.fixtures.service import Service, service  # noqa: F401
from tests.integration.test_service import settings_for

pytestmark = pytest.mark.integration


def _error(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return dict(body["error"])


def _wait_done(http: httpx.Client, submission_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"/v1/submissions/{submission_id}").json()
        if status["done"]:
            return dict(status)
        time.sleep(0.2)
    raise AssertionError(f"submission {submission_id} not finished after {timeout}s: {status}")


def test_uploads_are_judged_and_read_back_as_the_cli_prints_them(api: ApiServer, service: Service) -> None:  # noqa: F811
    service.start_worker()
    key = api.tenant("acme", "submit,read")
    png = make_image_bytes("PNG", seed=3)
    jpeg = make_image_bytes("JPEG", seed=4)
    with api.client(key) as http:
        response = http.post(
            "/v1/scans",
            files=[("file", ("a.png", png, "image/png")), ("file", ("b.jpg", jpeg, "image/jpeg"))],
            data={"client_ref": "post-1"},
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["created"] is True
        assert [job["filename"] for job in accepted["jobs"]] == ["a.png", "b.jpg"]
        assert all(job["source"].startswith("upload:sha256:") for job in accepted["jobs"])
        status = _wait_done(http, accepted["submission_id"])
        assert status["counts"]["done"] == 2, status
        job_id = accepted["jobs"][0]["job_id"]
        job = http.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "done" and job["label"] in ("real", "fake") and job["image_format"] == "PNG"
        listed = http.get(f"/v1/submissions/{accepted['submission_id']}/results").json()["results"]
        assert [row["job_id"] for row in listed] == [j["job_id"] for j in accepted["jobs"]]
        page = http.get("/v1/results", params={"client_ref": "post-1", "limit": 1}).json()
        assert len(page["results"]) == 1 and page["next_cursor"] is not None
        rest = http.get("/v1/results", params={"client_ref": "post-1", "cursor": page["next_cursor"]}).json()
        assert len(rest["results"]) == 1 and rest["next_cursor"] is None
        assert {page["results"][0]["job_id"], rest["results"][0]["job_id"]} == {
            j["job_id"] for j in accepted["jobs"]
        }
    # The same JSON object as `dfscan results --format json`, plus the API's `review` (no decision yet).
    cli = service.cli("results", accepted["submission_id"], "--format", "json")
    assert cli.returncode == 0, cli.stderr
    by_id = {row["job_id"]: row for row in map(json.loads, cli.stdout.splitlines())}
    assert job.pop("review") is None
    assert by_id[job_id] == job
    # The upload store holds the bytes under their digest; the store is no allowed root.
    stored = list((service.tmp / "uploads").glob("*/*"))
    assert len(stored) == 2 and str(service.tmp / "uploads") not in service.env["DFSCAN_ALLOWED_ROOTS"]


def test_urls_are_fetched_through_the_guard(service: Service, tmp_path: Path) -> None:  # noqa: F811
    png = make_image_bytes("PNG", seed=5)
    with serve_http({"/a.png": png}) as origin:
        env = {
            **service.env,
            "DFSCAN_URL_ALLOWLIST": "127.0.0.1",
            "DFSCAN_UPLOAD_STORE": str(tmp_path / "up"),
        }
        server = start_api(env, service.database_url, tmp_path / "api.log")
        try:
            service.start_worker(env=env)
            key = server.tenant("acme")
            with server.client(key) as http:
                response = http.post(
                    "/v1/scans", json={"sources": [origin.url("/a.png")], "lane": "interactive"}
                )
                assert response.status_code == 202, response.text
                status = _wait_done(http, response.json()["submission_id"])
                assert status["counts"]["done"] == 1
                assert origin.hits["/a.png"] == 1
        finally:
            server.stop()


def test_intake_refuses_what_it_must(api: ApiServer, service: Service) -> None:  # noqa: F811
    key = api.tenant("acme")
    refused: list[tuple[dict[str, Any], int, str]] = [
        ({"sources": ["/etc/passwd"]}, 422, "UNSUPPORTED_SOURCE"),
        ({"sources": ["file:///etc/passwd"]}, 422, "UNSUPPORTED_SOURCE"),
        ({"sources": ["upload:sha256:" + "0" * 64]}, 422, "UNSUPPORTED_SOURCE"),
        ({"sources": ["http://169.254.169.254/latest/meta-data"]}, 422, "BLOCKED_DESTINATION"),
        ({"sources": ["http://127.0.0.1:6379/"]}, 422, "BLOCKED_DESTINATION"),
        (
            {"sources": ["https://example.com/a.jpg"], "callback_url": "http://10.0.0.1/hook"},
            422,
            "BLOCKED_DESTINATION",
        ),
        (
            {"sources": ["https://example.com/a.jpg"], "callback_url": "https://x.example/" + "a" * 3000},
            422,
            "CALLBACK_URL_TOO_LONG",
        ),
        (
            {"sources": ["https://example.com/a.jpg"], "callback_url": "ftp://x.example/"},
            422,
            "UNSUPPORTED_SOURCE",
        ),
        ({"sources": ["https://example.com/a.jpg"], "events": ["job.completed"]}, 422, "BAD_ARGUMENT"),
        ({"sources": []}, 422, "BAD_ARGUMENT"),
        ({"sources": "https://example.com/a.jpg"}, 422, "BAD_ARGUMENT"),
        ({"sources": ["https://example.com/a.jpg"], "unknown": 1}, 422, "BAD_ARGUMENT"),
        ({"sources": ["https://example.com/a.jpg"], "lane": "fast"}, 422, "BAD_ARGUMENT"),
        ({"sources": ["https://example.com/a.jpg"], "explain": "yes"}, 422, "BAD_OPTION"),
        ({"sources": ["https://example.com/a.jpg"], "explain": 1}, 422, "BAD_OPTION"),
        ({"sources": ["https://example.com/a.jpg"], "faces": "sometimes"}, 422, "BAD_OPTION"),
        ({"sources": ["https://example.com/a.jpg"], "faces": ["off"]}, 422, "BAD_OPTION"),
    ]
    with api.client(key) as http:
        for body, status, code in refused:
            response = http.post("/v1/scans", json=body)
            assert (response.status_code, _error(response)["code"]) == (status, code), (body, response.text)
        response = http.post(
            "/v1/scans", content=b'{"sources": [', headers={"content-type": "application/json"}
        )
        assert response.status_code == 400 and _error(response)["code"] == "MALFORMED_REQUEST"
        response = http.post("/v1/scans", content=b"sources=x", headers={"content-type": "text/plain"})
        assert response.status_code == 415 and _error(response)["code"] == "UNSUPPORTED_FORMAT"
        response = http.post(
            "/v1/scans", files=[("file", ("notes.txt", b"just some text, not an image", "text/plain"))]
        )
        assert response.status_code == 415 and _error(response)["code"] == "UNSUPPORTED_FORMAT"
        response = http.post("/v1/scans", files=[("other", ("a.png", make_image_bytes("PNG"), "image/png"))])
        assert response.status_code == 422, response.text
        for field in (
            {"faces": "never"},
            {"explain": "maybe"},
        ):  # multipart: refused before the upload is kept
            response = http.post(
                "/v1/scans", files=[("file", ("a.png", make_image_bytes("PNG"), "image/png"))], data=field
            )
            assert (response.status_code, _error(response)["code"]) == (422, "BAD_OPTION"), response.text
        # a JSON body over DFSCAN_API_MAX_JSON_BYTES (1 MiB): refused from its Content-Length, unread
        big = b'{"sources": ["' + b"a" * (2 * 1024 * 1024) + b'"]}'
        response = http.post("/v1/scans", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413 and _error(response)["code"] == "TOO_LARGE"
    # nothing of the above was stored or queued
    assert not list((service.tmp / "uploads").glob("*/*"))
    with api.client(api.tenant("acme", "read")) as http:
        assert http.get("/v1/results").json()["results"] == []


def test_upload_caps_apply_before_anything_is_queued(service: Service, tmp_path: Path) -> None:  # noqa: F811
    env = {**service.env, "DFSCAN_MAX_BYTES": "20000", "DFSCAN_UPLOAD_STORE": str(tmp_path / "up")}
    server = start_api(env, service.database_url, tmp_path / "api.log")
    try:
        key = server.tenant("acme", "submit,read")
        noise = make_image_bytes("PNG", size=(400, 400), seed=9)
        assert len(noise) > 20000
        with server.client(key) as http:
            response = http.post("/v1/scans", files=[("file", ("big.png", noise, "image/png"))])
            assert response.status_code == 413 and _error(response)["code"] == "TOO_LARGE", response.text
            assert http.get("/v1/results").json()["results"] == []
        assert not list((tmp_path / "up").glob("*/*"))
    finally:
        server.stop()


def test_a_file_past_its_cap_is_refused_while_it_streams_not_after_it_is_spooled(
    service: Service, tmp_path: Path
) -> None:  # noqa: F811
    """A chunked upload (no Content-Length for the body cap to refuse at once) sends 100 kB of a PNG over a
    20 kB cap and then stops, its body unfinished: the 413 comes back while the server still waits for the
    rest, so the file was capped as it streamed in (spooling it whole first would wait for the body, then
    answer 408 after DFSCAN_API_BODY_TIMEOUT)."""
    env = {
        **service.env,
        "DFSCAN_MAX_BYTES": "20000",
        "DFSCAN_API_BODY_TIMEOUT": "600",
        "DFSCAN_UPLOAD_STORE": str(tmp_path / "up"),
    }
    server = start_api(env, service.database_url, tmp_path / "api.log")
    try:
        key = server.tenant("acme", "submit,read")
        host, port = server.base_url.removeprefix("http://").split(":")
        boundary = "capped-while-streaming"
        head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        png = make_image_bytes("PNG", size=(64, 64), seed=3)
        part = head + png[:16] + b"\0" * 100_000  # a PNG's first bytes, then far past the cap
        request = (
            (
                "POST /v1/scans HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                f"Authorization: Bearer {key}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
            + f"{len(part):x}\r\n".encode()
            + part
            + b"\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=120) as sock:
            sock.sendall(request)  # and nothing more: the body never ends
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                got = sock.recv(65536)
                if not got:
                    break
                answer += got
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"413", answer[:500]
        body = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert (
            body["error"]["code"] == "TOO_LARGE" and "20000-byte cap on an image" in body["error"]["message"]
        )
        assert not list((tmp_path / "up").glob("*/*"))
    finally:
        server.stop()


def test_idempotency_keys_replay_within_a_tenant_only(api: ApiServer) -> None:  # noqa: F811
    key_a, key_b = api.tenant("tenant-a"), api.tenant("tenant-b")
    body = {"sources": ["https://example.com/a.jpg", "https://example.com/b.jpg"], "client_ref": "x"}
    headers = {"Idempotency-Key": "order-42"}
    with api.client(key_a) as a, api.client(key_b) as b:
        first = a.post("/v1/scans", json=body, headers=headers)
        again = a.post("/v1/scans", json=body, headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.json()["submission_id"] == first.json()["submission_id"]
        assert again.json()["created"] is False and first.json()["created"] is True
        assert again.json()["jobs"] == first.json()["jobs"]
        conflict = a.post("/v1/scans", json={"sources": ["https://example.com/c.jpg"]}, headers=headers)
        assert conflict.status_code == 409 and _error(conflict)["code"] == "IDEMPOTENCY_CONFLICT"
        other = b.post("/v1/scans", json=body, headers=headers)
        assert other.status_code == 202 and other.json()["created"] is True
        assert other.json()["submission_id"] != first.json()["submission_id"]
        # isolation on every id the API handed out
        sub = first.json()["submission_id"]
        for path in (
            f"/v1/submissions/{sub}",
            f"/v1/submissions/{sub}/results",
            f"/v1/jobs/{first.json()['jobs'][0]['job_id']}",
        ):
            assert a.get(path).status_code == 200
            response = b.get(path)
            assert response.status_code == 404 and _error(response)["code"] == "UNKNOWN_ID", path


def test_options_per_request_reach_the_worker(api: ApiServer, service: Service) -> None:  # noqa: F811
    """``explain`` and ``faces`` are the job's own: one worker (DFSCAN_FACES=auto, DFSCAN_EXPLAIN off)
    judges one request's scene whole with a heatmap, and the same scene in a plain request on its face
    without one; ScanClient and `dfscan submit` refuse a bad value with the same code."""
    pytest.importorskip("skimage", reason="the scene needs scikit-image's astronaut photo (dev extra)")
    service.start_worker()
    key = api.tenant("acme", "submit,read")
    scene = face_scene(160, seed=4, size=(640, 480))
    buf = io.BytesIO()
    scene.image.save(buf, "JPEG", quality=92)
    upload = [("file", ("scene.jpg", buf.getvalue(), "image/jpeg"))]
    with api.client(key) as http:
        asked = http.post("/v1/scans", files=upload, data={"explain": "true", "faces": "off"})
        plain = http.post("/v1/scans", files=upload)
        assert asked.status_code == plain.status_code == 202, (asked.text, plain.text)
        jobs_ = {}
        for name, response in (("asked", asked), ("plain", plain)):
            assert _wait_done(http, response.json()["submission_id"])["counts"]["done"] == 1
            jobs_[name] = http.get(f"/v1/jobs/{response.json()['jobs'][0]['job_id']}").json()
    whole, faces = jobs_["asked"], jobs_["plain"]
    assert whole["status"] == faces["status"] == "done", (whole, faces)
    assert whole["judged_on"] == "image" and not whole["faces"] and "+faces:" not in whole["model_version"]
    (heatmap,) = whole["explanation"]  # the one judged region, the whole image
    assert heatmap["box"] is None and len(heatmap["grid"]) > 1 and max(map(max, heatmap["grid"])) > 0
    assert (
        faces["judged_on"] == "faces"
        and len(faces["faces"]) == 1
        and "+faces:auto:" in faces["model_version"]
    )
    assert faces["explanation"] is None  # not asked: not paid
    with new_session_factory(new_engine(service.database_url))() as session:
        stored = {
            row.id: row.options
            for row in session.scalars(select(ScanJob).where(ScanJob.tenant_id.is_not(None)))
        }
    assert stored[uuid.UUID(whole["job_id"])] == {"explain": True, "faces": "off"}
    assert stored[uuid.UUID(faces["job_id"])] is None
    with pytest.raises(BadOptionError, match="faces"):
        ScanClient(settings_for(service)).submit(["x.jpg"], faces="sometimes")
    cli = service.cli("submit", "--faces", "sometimes", str(service.images))
    assert cli.returncode == 2 and "BAD_OPTION" in cli.stderr, cli.stderr
