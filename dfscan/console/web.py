"""The review console under ``/ui``: server-rendered pages over ``db.reviews``, for reviewers signed in with
an API key that has the ``review`` scope.

Pages answer HTML (a sign-in redirect, or an HTML 404 for what is not the tenant's); every answer carries a
strict Content-Security-Policy (scripts, styles, images and media from this origin only, no inline code, no
framing) and the pages are ``no-store``. Forms carry the session's CSRF token and are refused (403) without
it or with a foreign ``Origin``.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import select

from db import reviews, uploads
from db.models import ApiKey, Tenant
from dfscan.api.app import ROUTERS
from dfscan.api.auth import sessions_of
from dfscan.console import agreement, media, svg
from dfscan.console.session import LOGIN_COOKIE, SESSION_COOKIE, ConsoleSession, Signer, tokens_match

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chromium send "Origin: null" on our own POSTs
    "Cache-Control": "no-store",
}
PAGE = 50
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}

router = APIRouter(prefix="/ui", include_in_schema=False)


@lru_cache(maxsize=1)
def _static() -> dict[str, bytes]:
    base = resources.files("dfscan.console") / "static"
    return {name: (base / name).read_bytes() for name in STATIC}


def _static_url(name: str) -> str:
    digest = hashlib.sha256(_static()[name]).hexdigest()[:12]
    return f"/ui/static/{name}?v={digest}"


@lru_cache(maxsize=1)
def _templates() -> Environment:
    folder = resources.files("dfscan.console") / "templates"
    env = Environment(loader=FileSystemLoader(str(folder)), autoescape=select_autoescape(default=True))
    env.globals["static_url"] = _static_url
    return env


def _signer(request: Request) -> Signer:
    state = request.app.state
    signer: Signer | None = getattr(state, "console_signer", None)
    if signer is None:
        settings = state.settings
        signer = Signer(
            settings.console_secret.get_secret_value(), max_age_s=settings.console_session_hours * 3600
        )
        state.console_signer = signer
    return signer


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates().get_template(name).render(**context)
    return _secure(HTMLResponse(html, status_code=status))  # type: ignore[return-value]


class Reviewer:
    """Who is signed in: the live key behind the cookie, its tenant, and the session's CSRF token."""

    def __init__(self, session: ConsoleSession, prefix: str, tenant_name: str) -> None:
        self.key_id = session.key_id
        self.tenant_id = session.tenant_id
        self.csrf = session.csrf
        self.prefix = prefix
        self.tenant_name = tenant_name

    def context(self) -> dict[str, Any]:
        return {
            "principal": self,
            "principal_prefix": self.prefix,
            "tenant_name": self.tenant_name,
            "csrf_token": self.csrf,
        }


def _reviewer(request: Request) -> Reviewer | None:
    session = _signer(request).read_session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    with sessions_of(request)() as db:
        row = db.execute(
            select(ApiKey.prefix, ApiKey.scopes, ApiKey.revoked_at, Tenant.name)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.id == session.key_id, ApiKey.tenant_id == session.tenant_id)
        ).first()
    if row is None or row.revoked_at is not None or "review" not in row.scopes.split(","):
        return None
    return Reviewer(session, row.prefix, row.name)


def _to_login() -> Response:
    return _secure(RedirectResponse("/ui/login", status_code=303))


def _not_found(reviewer: Reviewer, what: str) -> HTMLResponse:
    return _page("error.html", 404, title="Not found", message=what, **reviewer.context())


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not sent by every client; the CSRF token is the check that always applies
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _refused(message: str) -> Response:
    return _secure(HTMLResponse(f"<!doctype html><title>403</title><p>{message}</p>", status_code=403))


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    response = Response(_static()[name], media_type=STATIC[name])
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


@router.get("")
@router.get("/")
def home(request: Request) -> Response:
    return _secure(RedirectResponse("/ui/queue" if _reviewer(request) else "/ui/login", status_code=303))


@router.get("/login")
def login_page(request: Request) -> Response:
    value, token = _signer(request).login_cookie()
    response = _page("login.html", csrf_token=token, principal=None)
    response.set_cookie(LOGIN_COOKIE, value, httponly=True, samesite="strict", path="/ui", max_age=3600)
    return response


@router.post("/login")
def login(request: Request, api_key: str = Form(""), csrf_token: str = Form("")) -> Response:
    signer = _signer(request)
    if not _same_origin(request) or not tokens_match(
        signer.read_login(request.cookies.get(LOGIN_COOKIE)), csrf_token
    ):
        return _refused("The sign-in form expired or came from elsewhere: reload the sign-in page.")
    from dfscan.api.auth import authenticate

    with sessions_of(request)() as db:
        principal = authenticate(db, api_key.strip()) if api_key.strip() else None
    if principal is None or "review" not in principal.scopes:
        value, token = signer.login_cookie()
        response = _page(
            "login.html",
            401,
            csrf_token=token,
            principal=None,
            error="That key is unknown, revoked, or lacks the review scope.",
        )
        response.set_cookie(LOGIN_COOKIE, value, httponly=True, samesite="strict", path="/ui", max_age=3600)
        return response
    value, _ = signer.session_cookie(principal.key_id, principal.tenant_id)
    redirect = _secure(RedirectResponse("/ui/queue", status_code=303))
    redirect.set_cookie(
        SESSION_COOKIE,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
        max_age=int(signer.max_age_s),
    )
    redirect.delete_cookie(LOGIN_COOKIE, path="/ui")
    return redirect


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("")) -> Response:
    reviewer = _reviewer(request)
    if reviewer is None:
        return _to_login()
    if not _same_origin(request) or not tokens_match(reviewer.csrf, csrf_token):
        return _refused("Missing or wrong CSRF token.")
    response = _to_login()
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


def _filters(
    label: str, media_kind: str, client_ref: str, model_version: str, state: str
) -> reviews.QueueFilters:
    return reviews.QueueFilters(
        label=label if label in reviews.LABEL_FILTERS else "all",
        media=media_kind if media_kind in ("image", "video") else None,
        client_ref=client_ref.strip()[:255] or None,
        model_version=model_version.strip()[:255] or None,
        state=state if state in reviews.STATE_FILTERS else None,
    )


def _job_href(job_id: uuid.UUID, filters: reviews.QueueFilters) -> str:
    return f"/ui/jobs/{job_id}?{urlencode(filters.query_params())}"


@router.get("/queue")
def queue_page(
    request: Request,
    label: str = "all",
    media_kind: str = Query("", alias="media"),
    client_ref: str = "",
    model_version: str = "",
    state: str = "",
    after: uuid.UUID | None = None,
) -> Response:
    reviewer = _reviewer(request)
    if reviewer is None:
        return _to_login()
    filters = _filters(label, media_kind, client_ref, model_version, state)
    with sessions_of(request)() as db:
        page = reviews.queue(db, reviewer.tenant_id, filters, limit=PAGE, cursor=after)
        held = uploads.held_by(db, reviewer.tenant_id, [row.image_sha256 for row in page.rows])
    store = held_media(request, held)
    rows = [
        {
            **row.__dict__,
            "href": _job_href(row.job_id, filters),
            "held": store is not None and store.holds(row.image_sha256),
        }
        for row in page.rows
    ]
    next_href = None
    if page.next_cursor is not None:
        next_href = "/ui/queue?" + urlencode({**filters.query_params(), "after": str(page.next_cursor)})
    return _page("queue.html", rows=rows, filters=filters, next_href=next_href, **reviewer.context())


@router.get("/jobs/{job_id}")
def item_page(
    job_id: uuid.UUID,
    request: Request,
    label: str = "all",
    media_kind: str = Query("", alias="media"),
    client_ref: str = "",
    model_version: str = "",
    state: str = "",
) -> Response:
    reviewer = _reviewer(request)
    if reviewer is None:
        return _to_login()
    filters = _filters(label, media_kind, client_ref, model_version, state)
    with sessions_of(request)() as db:
        found = reviews.item(db, reviewer.tenant_id, job_id)
        if found is None:
            return _not_found(reviewer, "No such verdict in your tenant.")
        job, result = found
        verdict = reviews.verdict_row(db, job_id)
        newer, older = reviews.neighbours(db, reviewer.tenant_id, job_id, filters)
        history = reviews.history(db, reviewer.tenant_id, job_id)
        held = uploads.held_by(db, reviewer.tenant_id, [verdict.image_sha256 if verdict else None])
        assert verdict is not None
        shown_by, previews = reviews.preview_times(
            db, reviewer.tenant_id, job_id, verdict.image_sha256, verdict.media
        )
        size = (verdict.width, verdict.height) if verdict.width and verdict.height else None
        if size is None:  # answered from the duplicate cache: the size recorded when the bytes were decoded
            size = reviews.size_of_bytes(db, reviewer.tenant_id, verdict.image_sha256, verdict.media)
    width, height = size or (None, None)
    faces = [
        {"x": f.box[0], "y": f.box[1], "w": f.box[2], "h": f.box[3], "fake_score": f.fake_score}
        for f in result.verdict.faces
    ]
    boxes_svg = timeline_svg = None
    if verdict.media == "image" and width and height:
        boxes = [svg.Box(*f.box, fake_score=f.fake_score) for f in result.verdict.faces]
        heats = [svg.Heat(h.box, h.grid) for h in result.verdict.explanation or ()]
        boxes_svg = Markup(svg.face_boxes(width, height, boxes, verdict.threshold, heats))
    if verdict.media == "video":
        points = [
            svg.Point(frame.t, frame.fake_score)
            for frame in (result.verdict.frames or ())
            if frame.fake_score is not None  # a frame not judged (no face) has no point
        ]
        thumbs = [svg.Thumb(t, f"/ui/previews/{shown_by}/{seq}") for seq, t in previews if t is not None]
        aspect = height / width if width and height else 0.75
        timeline_svg = Markup(
            svg.timeline(
                points, verdict.threshold, duration_s=verdict.duration_s, thumbs=thumbs, aspect=aspect
            )
        )
    store = held_media(request, held)
    still = [seq for seq, t in previews if t is None]
    item = {
        "held": store is not None
        and media.content_type(verdict.image_format) is not None
        and store.holds(verdict.image_sha256),
        # The stored preview of a still image: shown when the bytes are no longer held (a URL source).
        "preview_href": f"/ui/previews/{shown_by}/{still[0]}" if still else None,
        "n_thumbs": sum(1 for _, t in previews if t is not None),
        "n_heatmaps": len(result.verdict.explanation or ()),
        "width": width,
        "height": height,
        "provenance": result.verdict.provenance,
        "second_opinion": result.verdict.second_opinion,
        "near_duplicate_of": _uuid_or_none(result.verdict.near_duplicate_of),
        "near_distance": result.verdict.near_distance,
        "matches": result.verdict.matches,
        "job_id": job.id,
        "source": job.source,
        "client_ref": job.client_ref,
        "faces": faces,
        **{
            name: getattr(verdict, name)
            for name in (
                "media",
                "label",
                "fake_score",
                "threshold",
                "judged_on",
                "model_version",
                "image_format",
                "duration_s",
                "peak_t",
                "fetch_ms",
                "decode_ms",
                "infer_ms",
                "created_at",
                "image_sha256",
            )
        },
    }
    return _page(
        "item.html",
        item=item,
        boxes_svg=boxes_svg,
        timeline_svg=timeline_svg,
        review=history[0] if history else None,
        history=history,
        prev_href=_job_href(newer, filters) if newer else None,
        next_href=_job_href(older, filters) if older else None,
        queue_href="/ui/queue?" + urlencode(filters.query_params()),
        **reviewer.context(),
    )


@router.post("/jobs/{job_id}/review")
def review_form(
    job_id: uuid.UUID,
    request: Request,
    decision: str = Form(""),
    note: str = Form(""),
    csrf_token: str = Form(""),
    next: str = Form(""),
) -> Response:
    reviewer = _reviewer(request)
    if reviewer is None:
        return _to_login()
    if not _same_origin(request) or not tokens_match(reviewer.csrf, csrf_token):
        return _refused("Missing or wrong CSRF token: reload the page and decide again.")
    if decision not in agreement.DECISIONS or len(note) > reviews.MAX_NOTE or "\x00" in note:
        return _secure(HTMLResponse("unknown decision or note too long", status_code=422))
    with sessions_of(request)() as db, db.begin():
        entry = reviews.record(
            db,
            tenant_id=reviewer.tenant_id,
            job_id=job_id,
            decision=decision,
            note=note,
            api_key_id=reviewer.key_id,
        )
    if entry is None:
        return _not_found(reviewer, "No such verdict in your tenant.")
    # Only our own item pages are followed after a decision (no open redirect).
    target = next if next.startswith("/ui/jobs/") and "//" not in next else f"/ui/jobs/{job_id}"
    return _secure(RedirectResponse(target, status_code=303))


@router.get("/media/{job_id}")
def media_file(job_id: uuid.UUID, request: Request) -> Response:
    reviewer = _reviewer(request)
    if reviewer is None:
        return _secure(Response(status_code=401))
    with sessions_of(request)() as db:
        found = reviews.item(db, reviewer.tenant_id, job_id)
        verdict = reviews.verdict_row(db, job_id) if found is not None else None
        held = uploads.held_by(db, reviewer.tenant_id, [verdict.image_sha256 if verdict else None])
    if verdict is None:
        return _secure(Response(status_code=404))
    kind = media.content_type(verdict.image_format)
    store = held_media(request, held)
    data = store.read(verdict.image_sha256) if store is not None and kind is not None else None
    if data is None or kind is None:
        return _secure(Response("media no longer held", status_code=404, media_type="text/plain"))
    response = Response(data, media_type=kind)
    response.headers.update(SECURITY_HEADERS)
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, max-age=300"
    response.headers["Content-Disposition"] = "inline"
    return response


@router.get("/previews/{job_id}/{seq}")
def preview_file(job_id: uuid.UUID, seq: int, request: Request) -> Response:
    """A stored preview (a still image's, or a clip frame's thumbnail) of a done job of the reviewer's
    tenant; 404 for anything else, as for the media."""
    reviewer = _reviewer(request)
    if reviewer is None:
        return _secure(Response(status_code=401))
    with sessions_of(request)() as db:
        data = reviews.preview(db, reviewer.tenant_id, job_id, seq) if 0 <= seq < 1 << 15 else None
    if data is None:
        return _secure(Response(status_code=404))
    response = Response(data, media_type="image/jpeg")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, max-age=300"
    return response


def held_media(request: Request, held: set[str]) -> media.HeldMedia | None:
    """The upload store as the reviewer's tenant sees it: ``held``, the digests its upload rows hold."""
    root = getattr(request.app.state.settings, "upload_store", None)
    return media.TenantMedia(media.DirectoryMedia(root), held) if root else None


@router.get("/agreement")
def agreement_page(request: Request, model_version: str = "") -> Response:
    reviewer = _reviewer(request)
    if reviewer is None:
        return _to_login()
    with sessions_of(request)() as db:
        versions = reviews.reviewed_model_versions(db, reviewer.tenant_id)
        chosen = model_version if model_version in versions else (versions[0] if versions else None)
        rows = reviews.decided(db, reviewer.tenant_id, model_version=chosen) if chosen else []
    items = [
        agreement.Reviewed(
            str(r.job_id), r.model_label, r.fake_score, r.threshold, r.decision, _utc(r.decided_at)
        )
        for r in rows
        if r.fake_score is not None  # a model not_applicable has no score to agree or disagree with
    ]
    return _page(
        "agreement.html",
        versions=versions,
        model_version=chosen,
        decisions=agreement.DECISIONS,
        matrix=agreement.confusion(items),
        by_day=agreement.disagreement_by_day(items),
        furthest=agreement.furthest(items),
        **reviewer.context(),
    )


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return None if value is None else uuid.UUID(str(value))
    except ValueError:
        return None


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


ROUTERS.append(router)
