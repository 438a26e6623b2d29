"""The review console end to end: a real `dfscan api` (uvicorn on 127.0.0.1, real Postgres and Redis), a real
headless Chromium driven by Playwright, and a real webhook receiver fed by the delivery loop.

One test is the proof of the feature (sign in, queue, item, face boxes, keyboard decisions, the decision seen
through the API and the webhook, tenant isolation, XSS shown as text, CSRF, cookie replay, CSP); it saves the
screenshots (docs/img/ when DFSCAN_SCREENSHOTS=docs/img).
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select

from db.models import Review, Tenant, VerdictFace, VerdictPreview
from db.session import new_engine, new_session_factory
from db.tenants import webhook_secrets
from dfscan.console.session import SESSION_COOKIE
from dfscan.settings import Settings
from dfscan.webhooks import verify
from tests.fixtures.api import ApiServer, make_key, start_api
from tests.fixtures.browser import SCREENSHOTS, browser  # noqa: F401
from tests.fixtures.console import (
    HEAT_CELLS,
    XSS_BANK,
    XSS_ENTRY,
    XSS_NOTE,
    XSS_REF,
    XSS_SIGNER,
    XSS_SOFTWARE,
    XSS_SOURCE,
    seed,
)
from tests.fixtures.service import Service, service  # noqa: F401
from tests.fixtures.webhook_receiver import Receiver
from worker.delivery import Deliverer

CEILING = 120.0
CONSOLE_SECRET = "console-test-secret-0123456789"
WEBHOOK_SECRET = "whsec-console"


def wait_until(predicate: Any, what: str, timeout: float = CEILING) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    rx.start()
    yield rx
    rx.stop()


@pytest.fixture
def console(service: Service, tmp_path: Path) -> Iterator[ApiServer]:  # noqa: F811
    media = tmp_path / "uploads"
    media.mkdir()
    env = {
        **service.env,
        "DFSCAN_CONSOLE_SECRET": CONSOLE_SECRET,
        "DFSCAN_UPLOAD_STORE": str(media),
        "DFSCAN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "DFSCAN_WEBHOOK_ALLOWLIST": "127.0.0.1",
    }
    server = start_api(env, service.database_url, service.tmp / "api.log")
    server.env["media"] = str(media)
    try:
        yield server
    finally:
        server.stop()


def _tenant_id(database_url: str, name: str) -> uuid.UUID:
    engine = new_engine(database_url)
    try:
        with new_session_factory(engine)() as s:
            return s.execute(select(Tenant.id).where(Tenant.name == name)).scalar_one()
    finally:
        engine.dispose()


def _sign_in(page: Any, base: str, key: str) -> None:
    page.goto(f"{base}/ui/login")
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    try:
        page.wait_for_url(f"{base}/ui/queue", timeout=15000)
    except Exception:
        print("URL", page.url, page.content()[:3000])
        raise


def test_a_reviewer_decides_in_the_browser_and_the_decision_reaches_the_api_and_the_webhook(
    console: ApiServer,
    browser: Any,  # noqa: F811
    receiver: Receiver,
) -> None:
    base = console.base_url
    review_key = make_key(console.database_url, "acme", "read,review")
    read_key = make_key(console.database_url, "acme", "read")
    other_key = make_key(console.database_url, "globex", "review")
    acme = _tenant_id(console.database_url, "acme")
    globex = _tenant_id(console.database_url, "globex")
    engine = new_engine(console.database_url)
    sessions = new_session_factory(engine)
    media = Path(console.env["media"])
    with sessions.begin() as s:
        seeded = seed(s, acme, media, callback_url=receiver.url)
        theirs = seed(s, globex, media, client_ref="globex-ref", extra_images=0)
    with sessions() as s:
        stored_faces = s.scalar(
            select(func.count()).select_from(VerdictFace).where(VerdictFace.job_id == seeded.image_with_faces)
        )
    assert stored_faces == 2

    stop = threading.Event()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=console.database_url,
        webhook_secret=WEBHOOK_SECRET,
        webhook_allowlist="127.0.0.1",
        webhook_timeout=5,
    )
    deliverer = Deliverer(sessions, settings)
    deliverer.poll_interval = 0.2
    loop = threading.Thread(target=deliverer.run, args=(stop,), daemon=True)
    loop.start()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    other = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # Our own pages break no rule of their CSP (an inline style or script would show here).
        page.on(
            "console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None
        )

        # Sign in: the session cookie is HttpOnly, SameSite=Strict, and never holds the key.
        _sign_in(page, base, review_key)
        cookie = next(c for c in context.cookies() if c["name"] == SESSION_COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert review_key not in cookie["value"]

        # The queue: the tenant's verdicts only, newest first; hostile strings are text.
        rows = page.locator("table.queue tr.row")
        assert rows.count() == len(seeded.all_jobs)
        assert rows.first.get_attribute("data-job-id") == str(seeded.image_with_faces)
        assert page.locator("td.client-ref").first.inner_text() == XSS_REF
        assert page.locator("td.source a").first.inner_text() == XSS_SOURCE
        assert page.evaluate("window.__xss") is None
        # (page.evaluate polled from here: wait_for_function evaluates strings in the page, which the CSP forbids)
        wait_until(
            lambda: page.evaluate(
                "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
            ),
            "thumbnails not loaded",
        )
        assert (
            page.locator("td.thumb img").count() == len(seeded.all_jobs) - 1
        )  # every image; the video has none
        page.screenshot(path=str(SCREENSHOTS / "console-queue.png"), full_page=True)

        # Keyboard: j moves the selection, Enter opens the item; its boxes match the stored faces.
        page.keyboard.press("j")
        page.keyboard.press("k")
        page.keyboard.press("Enter")
        page.wait_for_url(f"{base}/ui/jobs/{seeded.image_with_faces}*")
        wait_until(lambda: page.evaluate("() => document.querySelector('img.subject').complete"), "image")
        assert page.evaluate("document.querySelector('img.subject').naturalWidth") == 800
        boxes = page.locator("svg.faces rect[data-face-index]")
        assert boxes.count() == stored_faces
        assert [boxes.nth(i).get_attribute("data-face-index") for i in range(boxes.count())] == ["0", "1"]
        assert page.locator("h1.source").inner_text() == XSS_SOURCE
        # The signals beside the score, drawn when the verdict has them; what sources and banks say is text.
        heat = page.locator("svg.faces g.heatmap")
        assert heat.count() == 2 and page.locator("svg.faces rect.heat").count() == 2 * HEAT_CELLS
        assert page.locator("dd.prov-signer").inner_text() == XSS_SIGNER
        assert page.locator("dd.prov-software").inner_text() == XSS_SOFTWARE
        assert page.locator("dd.prov-actions").inner_text() == "c2pa.created, <i>x</i>"
        assert page.locator("td.bank").inner_text() == XSS_BANK
        assert page.locator("td.entry").inner_text() == XSS_ENTRY
        near = page.locator("a.near-of")
        assert near.get_attribute("href") == f"/ui/jobs/{seeded.image_without_faces}"
        assert "distance 12" in page.locator("p.near-duplicate").inner_text()
        assert page.evaluate("window.__xss") is None
        page.screenshot(path=str(SCREENSHOTS / "console-image-item.png"), full_page=True)

        # A note holding markup, then Escalate (a button), then "f" from the keyboard: the latest counts.
        page.fill("#note", XSS_NOTE)
        page.click("button[value=escalate]")
        page.wait_for_url("**/ui/jobs/**")
        page.goto(f"{base}/ui/jobs/{seeded.image_with_faces}")
        assert page.locator("q.note").inner_text() == XSS_NOTE
        assert page.evaluate("window.__xss") is None
        page.keyboard.press("f")
        page.wait_for_url(f"{base}/ui/jobs/{seeded.image_without_faces}*")  # on to the next (older) item
        assert "No face judged" in page.locator("p.whole").inner_text()
        page.keyboard.press("r")
        page.wait_for_url(f"{base}/ui/jobs/{seeded.video}*")

        # The video: the timeline with its peak marked.
        peak = page.locator("svg.timeline circle.peak")
        assert peak.count() == 1 and peak.get_attribute("data-t") == "1.5"
        page.keyboard.press("k")
        page.wait_for_url(f"{base}/ui/jobs/{seeded.image_without_faces}*")
        assert errors == []

        # The decision through the API: GET /v1/jobs/{id} carries the latest review.
        with console.client(read_key) as api:
            got = api.get(f"/v1/jobs/{seeded.image_with_faces}").json()
        assert got["review"]["decision"] == "fake"
        with sessions() as s:
            history = list(
                s.scalars(
                    select(Review.decision)
                    .where(Review.job_id == seeded.image_with_faces)
                    .order_by(Review.id)
                )
            )
        assert history == ["escalate", "fake"]

        # ... and through the webhook: one signed job.reviewed event per decision.
        def reviewed() -> list[Any]:
            return [r for r in receiver.received if r.event["type"] == "job.reviewed"]

        wait_until(lambda: len(reviewed()) == 3, f"job.reviewed events: {len(reviewed())} of 3")
        with (
            sessions() as s
        ):  # the tenant's own secret where delivery signs per tenant, else the deployment's
            keys = [*webhook_secrets(s.get_one(Tenant, acme)), WEBHOOK_SECRET]
        for got_event in reviewed():
            header = got_event.headers["X-Dfscan-Signature"]
            assert any(verify(key, header, got_event.body) for key in keys)
            assert not verify("another-secret", header, got_event.body)
        decisions = sorted(
            (e.event["data"]["job_id"], e.event["data"]["review"]["decision"]) for e in reviewed()
        )
        assert decisions == sorted(
            [
                (str(seeded.image_with_faces), "escalate"),
                (str(seeded.image_with_faces), "fake"),
                (str(seeded.image_without_faces), "real"),
            ]
        )

        # Another tenant's reviewer: 404 on the first tenant's item and media; its own queue only.
        other_page = other.new_page()
        _sign_in(other_page, base, other_key)
        assert other_page.locator("table.queue tr.row").count() == len(theirs.all_jobs)
        answer = other_page.goto(f"{base}/ui/jobs/{seeded.image_with_faces}")
        assert answer is not None and answer.status == 404
        assert other.request.get(f"{base}/ui/media/{seeded.image_with_faces}").status == 404
        assert context.request.get(f"{base}/ui/media/{seeded.image_with_faces}").status == 200
        assert context.request.get(f"{base}/ui/media/{theirs.image_with_faces}").status == 404

        # A POST without the CSRF token is refused and changes nothing.
        refused = context.request.post(
            f"{base}/ui/jobs/{seeded.video}/review", form={"decision": "fake"}, max_redirects=0
        )
        assert refused.status == 403

        # Every page carries the CSP: scripts from this origin only, no inline code.
        answer = page.goto(f"{base}/ui/queue")
        assert answer is not None
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    finally:
        context.close()
        other.close()
        stop.set()
        loop.join(CEILING)
        deliverer.close()
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Review).where(Review.job_id == seeded.video)) == 0
    engine.dispose()

    # Cookies cannot be replayed for another tenant: one re-signed for globex with another secret is
    # refused, and acme's own cookie edited to name globex fails its signature.
    forged = URLSafeTimedSerializer("not-the-secret", salt="dfscan.console.session").dumps(
        {"k": str(uuid.uuid4()), "t": str(globex), "c": "x"}
    )
    acme_cookie = cookie["value"]
    _, data = URLSafeTimedSerializer("any", salt="dfscan.console.session").loads_unsafe(acme_cookie)
    assert data["t"] == str(acme)
    data["t"] = str(globex)
    payload = URLSafeTimedSerializer("any", salt="dfscan.console.session").dumps(data).rsplit(".", 2)[0]
    edited = payload + "." + ".".join(acme_cookie.rsplit(".", 2)[1:])  # acme's timestamp and signature
    for value in (forged, edited):
        with httpx.Client(base_url=base, cookies={SESSION_COOKIE: value}) as raw:
            answer_raw = raw.get(f"/ui/jobs/{theirs.image_with_faces}")
            assert answer_raw.status_code == 303 and answer_raw.headers["location"] == "/ui/login"
    with httpx.Client(base_url=base, cookies={SESSION_COOKIE: acme_cookie}) as raw:
        assert raw.get(f"/ui/jobs/{theirs.image_with_faces}").status_code == 404
        assert raw.get(f"/ui/jobs/{seeded.image_with_faces}").status_code == 200


def _wait_submission(api: httpx.Client, submission_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = api.get(f"/v1/submissions/{submission_id}").json()
        if status["done"]:
            return status
        time.sleep(0.2)
    raise AssertionError(f"submission {submission_id} not finished after {timeout}s: {status}")


def test_uploads_judged_by_a_real_worker_are_reviewed_in_the_browser(
    console: ApiServer,
    service: Service,  # noqa: F811
    browser: Any,  # noqa: F811
    receiver: Receiver,
) -> None:
    """The whole road: an image with faces and a clip uploaded through POST /v1/scans, judged by a real
    `dfscan worker` (faces found by its detector), then reviewed in the browser; the item page draws one box
    per stored face and the clip's timeline, and the keyboard decision reaches the API and the webhook."""
    from tests.fixtures.faces import face_clip, face_scene

    service.start_worker(env={"DFSCAN_UPLOAD_STORE": console.env["media"], "DFSCAN_VIDEO_FRAMES": "6"})
    key = make_key(console.database_url, "acme", "submit,read,review")
    scene = face_scene([160, 120], seed=3, size=(800, 600))
    buf = io.BytesIO()
    scene.image.save(buf, "JPEG", quality=92)
    clip, _ = face_clip([True] * 10, fps=5)
    with console.client(key) as api:
        accepted = api.post(
            "/v1/scans",
            files=[
                ("file", ("crowd.jpg", buf.getvalue(), "image/jpeg")),
                ("file", ("clip.mp4", clip, "video/mp4")),
            ],
            data={
                "client_ref": "worker-run",
                "callback_url": receiver.url,
                "events": "job.completed,job.reviewed",
            },
        )
        assert accepted.status_code == 202, accepted.text
        body = accepted.json()
        status = _wait_submission(api, body["submission_id"])
        assert status["counts"]["done"] == 2, status
        image_id, video_id = (job["job_id"] for job in body["jobs"])
        image = api.get(f"/v1/jobs/{image_id}").json()
        video = api.get(f"/v1/jobs/{video_id}").json()
        # The same bytes again: answered from the duplicate cache, nothing decoded, so no preview of its own.
        again = api.post("/v1/scans", files=[("file", ("again.jpg", buf.getvalue(), "image/jpeg"))]).json()
        assert _wait_submission(api, again["submission_id"])["counts"]["done"] == 1
        (again_job,) = again["jobs"]
        cached_id = again_job["job_id"]
        cached = api.get(f"/v1/jobs/{cached_id}").json()
        assert cached["cached"] is True, cached
    assert image["media"] == "image" and image["judged_on"] == "faces", image
    assert video["media"] == "video" and len(video["frames"]) == 6, video
    engine = new_engine(console.database_url)
    sessions = new_session_factory(engine)
    with sessions() as s:
        stored_faces = s.scalar(
            select(func.count()).select_from(VerdictFace).where(VerdictFace.job_id == uuid.UUID(image_id))
        )
    assert stored_faces == len(image["faces"]) >= 1
    with sessions() as s:  # the worker kept a preview of the image and a thumbnail of each sampled frame
        kept = {
            job: list(
                s.execute(select(VerdictPreview.t, VerdictPreview.jpeg).where(VerdictPreview.job_id == job))
            )
            for job in (uuid.UUID(image_id), uuid.UUID(video_id), uuid.UUID(cached_id))
        }
    assert kept.pop(uuid.UUID(cached_id)) == []
    assert [t for t, _ in kept[uuid.UUID(image_id)]] == [None]
    assert [t for t, _ in kept[uuid.UUID(video_id)]] == [f["t"] for f in video["frames"]]
    assert all(len(jpeg) < 20_000 for rows in kept.values() for _, jpeg in rows)

    stop = threading.Event()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=console.database_url,
        webhook_secret=WEBHOOK_SECRET,
        webhook_allowlist="127.0.0.1",
        webhook_timeout=5,
    )
    deliverer = Deliverer(sessions, settings)
    deliverer.poll_interval = 0.2
    loop = threading.Thread(target=deliverer.run, args=(stop,), daemon=True)
    loop.start()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None
        )
        _sign_in(page, console.base_url, key)
        rows = page.locator("table.queue tr.row")
        assert rows.count() == 3
        wait_until(
            lambda: page.evaluate(
                "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
            ),
            "queue thumbnails not loaded",
        )
        assert page.locator("td.thumb img").count() == 3  # the clip's row shows its first frame
        # Newest first: both were created in one submission, so the order is the queue's; open the image.
        page.click(f"tr.row[data-job-id='{image_id}'] a.open")
        page.wait_for_url(f"{console.base_url}/ui/jobs/{image_id}*")
        wait_until(lambda: page.evaluate("() => document.querySelector('img.subject').complete"), "image")
        assert page.evaluate("document.querySelector('img.subject').naturalWidth") == 800
        boxes = page.locator("svg.faces rect[data-face-index]")
        assert boxes.count() == stored_faces
        drawn = [
            tuple(int(boxes.nth(i).get_attribute(a) or -1) for a in ("x", "y", "width", "height"))
            for i in range(boxes.count())
        ]
        assert drawn == [tuple(face["box"]) for face in image["faces"]]
        with console.client(key) as api:
            with page.expect_navigation():  # decides, and the page moves on
                page.keyboard.press("f")

            def decision_of(job_id: str) -> str | None:
                return (api.get(f"/v1/jobs/{job_id}").json()["review"] or {}).get("decision")

            wait_until(lambda: decision_of(image_id) == "fake", "the image's decision")

        page.goto(f"{console.base_url}/ui/jobs/{video_id}")
        frames = page.locator("svg.timeline circle.frame")
        assert frames.count() == len([f for f in video["frames"] if f["fake_score"] is not None])
        peak = page.locator("svg.timeline circle.peak")
        assert peak.count() == 1 and float(peak.get_attribute("data-t") or "nan") == pytest.approx(
            video["peak_t"], abs=0.01
        )
        # The frames' thumbnails under the chart, one per kept frame at its time, served to this tenant.
        thumbs = page.locator("svg.timeline image.frame-thumb")
        assert thumbs.count() == len(kept[uuid.UUID(video_id)])
        assert [float(thumbs.nth(i).get_attribute("data-t") or "nan") for i in range(thumbs.count())] == (
            pytest.approx([f["t"] for f in video["frames"]], abs=0.01)
        )
        hrefs = [thumbs.nth(i).get_attribute("href") or "" for i in range(thumbs.count())]
        for href, (_, jpeg) in zip(hrefs, kept[uuid.UUID(video_id)], strict=True):
            got = context.request.get(console.base_url + href)
            assert got.status == 200 and got.headers["content-type"] == "image/jpeg" and got.body() == jpeg
        page.screenshot(path=str(SCREENSHOTS / "console-video-item.png"), full_page=True)
        with console.client(key) as api:
            with page.expect_navigation():
                page.keyboard.press("e")
            wait_until(lambda: decision_of(video_id) == "escalate", "the clip's decision")
            assert decision_of(image_id) == "fake"

        # Once the uploads are no longer held (past retention, or a URL source), the page shows the stored
        # preview under the same boxes, and the clip keeps its thumbnails.
        for body_job in body["jobs"]:
            digest = body_job["source"].rsplit(":", 1)[1]
            (Path(console.env["media"]) / digest[:2] / digest).unlink()
        # The cached verdict shows the preview of the same bytes, with its own faces (if the cache kept them).
        for shown, n_faces in ((image_id, stored_faces), (cached_id, len(cached["faces"]))):
            page.goto(f"{console.base_url}/ui/jobs/{shown}")
            wait_until(
                lambda: page.evaluate("() => document.querySelector('img.subject').complete"), "preview"
            )
            assert page.get_attribute("img.subject.preview", "src") == f"/ui/previews/{image_id}/0"
            assert page.evaluate("document.querySelector('img.subject.preview').naturalWidth") == 320
            assert page.locator("svg.faces rect[data-face-index]").count() == n_faces
            assert "small preview kept with the verdict" in page.locator("p.preview-note").inner_text()
        page.goto(f"{console.base_url}/ui/jobs/{video_id}")
        assert page.locator("video.subject").count() == 0
        assert page.locator("svg.timeline image.frame-thumb").count() == len(hrefs)
        assert errors == []

        # Another tenant's reviewer gets 404 for the previews, as for the media.
        other = browser.new_context()
        try:
            other_page = other.new_page()
            _sign_in(other_page, console.base_url, make_key(console.database_url, "globex", "review"))
            assert other.request.get(console.base_url + hrefs[0]).status == 404
            assert other.request.get(f"{console.base_url}/ui/previews/{image_id}/0").status == 404
        finally:
            other.close()
        assert context.request.get(f"{console.base_url}/ui/previews/{image_id}/0").status == 200
        assert context.request.get(f"{console.base_url}/ui/previews/{image_id}/1").status == 404

        def reviewed() -> list[Any]:
            return [r for r in receiver.received if r.event["type"] == "job.reviewed"]

        wait_until(lambda: len(reviewed()) == 2, f"job.reviewed events: {len(reviewed())} of 2")
        assert sorted(
            (e.event["data"]["job_id"], e.event["data"]["review"]["decision"]) for e in reviewed()
        ) == sorted([(image_id, "fake"), (video_id, "escalate")])
        acme = _tenant_id(console.database_url, "acme")
        with sessions() as s:
            keys = [*webhook_secrets(s.get_one(Tenant, acme)), WEBHOOK_SECRET]
        for got_event in reviewed():
            assert any(verify(k, got_event.headers["X-Dfscan-Signature"], got_event.body) for k in keys)
    finally:
        context.close()
        stop.set()
        loop.join(CEILING)
        deliverer.close()
        engine.dispose()
