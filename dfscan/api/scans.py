"""POST /v1/scans: queue sources for judging, from JSON (URLs) or a multipart upload (files).

The same road as ScanClient: rows in Postgres first (the caller's tenant, the key that submitted), then
one message per job (the outbox). What differs is the intake, because the caller is outside the trust
boundary:

- a JSON source must be an http(s) URL that passes the SSRF guard's static checks (scheme, host, no
  internal address unless DFSCAN_URL_ALLOWLIST names it); a path is refused (UNSUPPORTED_SOURCE): a
  client never names a file on the server. Host names are resolved and checked again at fetch time.
- an uploaded file is sniffed (its first bytes must start like an image or a video: 415
  UNSUPPORTED_FORMAT otherwise) and capped (DFSCAN_MAX_BYTES, DFSCAN_MAX_VIDEO_BYTES: 413 TOO_LARGE)
  before anything is stored or queued, then stored by its SHA-256 (``dfscan.uploads``), and held by the
  caller's tenant (an ``uploads`` row, written with the jobs: ``db.uploads``);
- the callback URL is checked by ``check_callback_url``, as at every other intake;
- ``Idempotency-Key`` works as ScanClient's key, within the tenant;
- the key's quotas (rate, jobs outstanding) and the queue's depth apply (429, 503).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from db import jobs, uploads
from db.models import utcnow
from dfscan.api.app import ROUTERS
from dfscan.api.auth import Principal, require_scope
from dfscan.api.errors import ERROR_RESPONSES
from dfscan.exceptions import (
    BadArgumentError,
    DfscanError,
    QueueFullError,
    TooLargeError,
    UnsupportedFormatError,
    UnsupportedSourceError,
)
from dfscan.media import SNIFF_BYTES, media_kind
from dfscan.options import FACES_MODES, JobOptions, parse_options
from dfscan.outbox import queue_depth, send_jobs
from dfscan.queueing import INTERACTIVE_PRIORITY
from dfscan.uploads import upload_source
from dfscan.urlguard import SourcePolicy, check_callback_url, is_url, parse_url
from dfscan.webhooks import EVENTS, parse_events

router = APIRouter(prefix="/v1", tags=["scans"], responses=ERROR_RESPONSES)

Lane = Literal["bulk", "interactive"]
LANE_PRIORITY = {"bulk": 0, "interactive": INTERACTIVE_PRIORITY}
Source = Annotated[str, StringConstraints(min_length=1, max_length=8192)]


class ScanRequest(BaseModel):
    """Sources to judge (http or https URLs) and how to report back."""

    model_config = ConfigDict(extra="forbid")

    sources: list[Source] = Field(min_length=1, description="http(s) URLs of images or videos.")
    # No length here: check_callback_url decides (CALLBACK_URL_TOO_LONG), as at every other intake.
    callback_url: str | None = Field(None, description="POST signed webhook events here.")
    events: list[Literal["job.completed", "submission.completed", "job.reviewed"]] | None = Field(
        None, description="Which events (default all); needs callback_url."
    )
    client_ref: str | None = Field(None, max_length=255, description="Your reference, stored on each job.")
    lane: Lane = Field("bulk", description="interactive: a few urgent items go ahead of bulk backfills.")
    # Per-job options (dfscan/options.py), checked by parse_options as at every intake (BAD_OPTION):
    # typed loosely here so a bad value answers its own code, described exactly for the OpenAPI document.
    explain: Any = Field(
        None,
        description="true: a heatmap per judged region in each result's explanation; false: none. "
        "Default: the worker's DFSCAN_EXPLAIN.",
        json_schema_extra={"type": "boolean"},
    )
    faces: Any = Field(
        None,
        description="auto, require or off: what each source is judged on. Default: the worker's DFSCAN_FACES.",
        json_schema_extra={"type": "string", "enum": list(FACES_MODES)},
    )

    def options(self) -> JobOptions:
        return parse_options(self.explain, self.faces)


class JobRef(BaseModel):
    job_id: uuid.UUID
    source: str
    filename: str | None = None


class ScanAccepted(BaseModel):
    submission_id: uuid.UUID
    jobs: list[JobRef]
    created: bool = Field(description="False when Idempotency-Key named an earlier submission.")


_MULTIPART_FIELDS = {
    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "client_ref": {"type": "string", "maxLength": 255},
    "callback_url": {"type": "string"},
    "events": {"type": "string", "description": "Comma-separated: " + ", ".join(EVENTS)},
    "lane": {"type": "string", "enum": ["bulk", "interactive"]},
    "explain": {"type": "string", "enum": ["true", "false"]},
    "faces": {"type": "string", "enum": list(FACES_MODES)},
}
_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ScanRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": _MULTIPART_FIELDS, "required": ["file"]}
            },
        },
    }
}


@router.post(
    "/scans",
    status_code=202,
    response_model=ScanAccepted,
    summary="Queue URLs (JSON) or uploaded files (multipart) for judging",
    openapi_extra=_REQUEST_BODY,
)
async def create_scan(
    request: Request,
    principal: Principal = Depends(require_scope("submit")),
    idempotency_key: str | None = Header(
        None, max_length=255, description="Same key, same submission: safe retries (per tenant)."
    ),
) -> JSONResponse:
    settings = request.app.state.settings
    content_type = request.headers.get("content-type", "").lower()
    filenames: list[str | None]
    stored: list[Stored] = []
    if content_type.startswith("multipart/form-data"):
        form = await _capped_form(request, settings)
        try:
            parts = [part for part in form.getlist("file") if isinstance(part, UploadFile)]
            if not parts:
                raise BadArgumentError("a multipart scan needs one or more `file` parts")
            names = ("client_ref", "callback_url", "events", "lane", "explain", "faces")
            fields = {name: form.get(name) for name in names}
            if any(value is not None and not isinstance(value, str) for value in fields.values()):
                raise BadArgumentError(f"{', '.join(names)} are text fields, not files")
            unknown = sorted(set(form.keys()) - {"file", *fields})
            if unknown:
                raise BadArgumentError(f"unknown form fields: {', '.join(unknown)}")
            events = [e.strip() for e in str(fields["events"]).split(",")] if fields["events"] else None
            try:
                scan = ScanRequest.model_validate(
                    {
                        "sources": ["upload"] * len(parts),  # placeholders: checked below, not as URLs
                        "callback_url": fields["callback_url"],
                        "events": events,
                        "client_ref": fields["client_ref"],
                        "lane": fields["lane"] or "bulk",
                        "explain": _form_bool(fields["explain"]),
                        "faces": fields["faces"],
                    }
                )
            except ValidationError as exc:
                raise RequestValidationError(exc.errors()) from None
            scan.options()  # BAD_OPTION before any upload is stored
            stored = [await _store_upload(request, part) for part in parts]
            sources = [upload_source(upload.sha256) for upload in stored]
            filenames = [part.filename for part in parts]
        finally:
            await form.close()
    elif content_type.startswith("application/json") or not content_type:
        body = await request.body()
        try:
            scan = ScanRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        scan.options()  # BAD_OPTION before any source is checked
        policy = SourcePolicy(url_allowlist=settings.url_allowlist)
        sources = [_checked_url(index, source, policy) for index, source in enumerate(scan.sources)]
        filenames = [None] * len(sources)
    else:
        raise UnsupportedFormatError(
            f"send application/json (URLs) or multipart/form-data (files), not {content_type[:80]!r}"
        )
    if len(sources) > settings.api_max_sources:
        raise BadArgumentError(
            f"{len(sources)} sources in one request; at most {settings.api_max_sources} "
            "(DFSCAN_API_MAX_SOURCES): split the batch"
        )
    accepted = await run_in_threadpool(
        _submit, request.app.state, principal, sources, scan, idempotency_key, filenames, stored
    )
    return JSONResponse(accepted, status_code=202)


def _form_bool(value: object) -> object:
    """A multipart ``explain`` field: ``true``/``false`` as booleans; anything else as it came (refused
    by parse_options with BAD_OPTION)."""
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


def _checked_url(index: int, source: str, policy: SourcePolicy) -> str:
    if not is_url(source):
        raise UnsupportedSourceError(
            f"sources[{index}]: only http(s) URLs are accepted over HTTP; upload a file with multipart/form-data "
            "instead of naming a path on the server"
        )
    try:
        parse_url(source, policy)
    except DfscanError as exc:  # UNSUPPORTED_SOURCE, BLOCKED_DESTINATION: keep the code, say which source
        raise type(exc)(f"sources[{index}]: {exc.message}") from None
    return source


class _CappedParser(MultiPartParser):
    """Starlette's multipart parser, with each file part's byte cap checked as its bytes arrive: a file past
    its cap ends the request with 413 TOO_LARGE when the cap is crossed, before the rest is read or spooled.
    The cap is the larger of DFSCAN_MAX_BYTES and DFSCAN_MAX_VIDEO_BYTES until the part's first bytes tell
    its kind, then that kind's."""

    def __init__(self, request: Request, settings: Any) -> None:
        super().__init__(request.headers, request.stream(), max_files=settings.api_max_files, max_fields=16)
        self._caps = {"image": settings.max_bytes, "video": settings.max_video_bytes}
        self._new_file()

    def _new_file(self) -> None:
        self._size = 0
        self._head = bytearray()
        self._kind: str | None = None

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._new_file()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            if self._kind is None and len(self._head) < SNIFF_BYTES:
                self._head += data[start : min(end, start + SNIFF_BYTES - len(self._head))]
                if len(self._head) >= SNIFF_BYTES:
                    self._kind = media_kind(bytes(self._head))
            self._size += end - start
            cap = self._caps[self._kind] if self._kind in self._caps else max(self._caps.values())
            if self._size > cap:
                name = (self._current_part.file.filename or "file")[:100]
                what = {"image": "an image", "video": "a video"}.get(self._kind or "", "a file")
                limit = "DFSCAN_MAX_VIDEO_BYTES" if self._kind == "video" else "DFSCAN_MAX_BYTES"
                if self._kind is None:
                    limit = "DFSCAN_MAX_BYTES / DFSCAN_MAX_VIDEO_BYTES"
                raise TooLargeError(f"{name!r} has more than the {cap}-byte cap on {what} ({limit})")
        super().on_part_data(data, start, end)


async def _capped_form(request: Request, settings: Any) -> FormData:
    """The multipart form, each file capped while it streams in (:class:`_CappedParser`)."""
    try:
        return await _CappedParser(request, settings).parse()
    except MultiPartException as exc:
        raise HTTPException(status_code=400, detail=exc.message) from None


@dataclass(frozen=True)
class Stored:
    """One uploaded file in the store; its ``uploads`` row is written with the submission's jobs."""

    sha256: str
    size: int
    kind: str


async def _store_upload(request: Request, part: UploadFile) -> Stored:
    """Sniff, cap and store one uploaded file."""
    settings = request.app.state.settings
    head = await part.read(SNIFF_BYTES)
    kind = media_kind(head)
    name = (part.filename or "file")[:100]
    if kind is None:
        raise UnsupportedFormatError(f"{name!r} does not start like an image or a video dfscan can judge")
    cap = settings.max_video_bytes if kind == "video" else settings.max_bytes
    size = part.size if part.size is not None else 0
    if size > cap:
        limit = "DFSCAN_MAX_VIDEO_BYTES" if kind == "video" else "DFSCAN_MAX_BYTES"
        raise TooLargeError(f"{name!r} has {size} bytes, more than the {cap}-byte cap on a {kind} ({limit})")
    await part.seek(0)
    store = request.app.state.uploads

    def chunks() -> Iterator[bytes]:
        while data := part.file.read(1024 * 1024):
            yield data

    digest, stored_size = await run_in_threadpool(store.put, chunks())
    return Stored(digest, stored_size, kind)


def _submit(
    state: Any,
    principal: Principal,
    sources: list[str],
    scan: ScanRequest,
    idempotency_key: str | None,
    filenames: list[str | None],
    stored: list[Stored],
) -> dict[str, Any]:
    settings = state.settings
    events = None
    if scan.callback_url is not None:
        check_callback_url(scan.callback_url, settings.webhook_allowlist)
        events = parse_events(",".join(scan.events) if scan.events else None)
    elif scan.events:
        raise BadArgumentError("events needs a callback_url")
    depth = queue_depth(settings.broker_url)
    if depth + len(sources) > settings.queue_max_depth:
        raise QueueFullError(
            f"the queue holds {depth} messages and {len(sources)} more would pass its limit; retry later"
        )
    with state.sessions.begin() as session:
        submission, new_jobs, created = jobs.create_submission(
            session,
            sources,
            client_ref=scan.client_ref,
            priority=LANE_PRIORITY[scan.lane],
            idempotency_key=idempotency_key,
            callback_url=scan.callback_url,
            callback_events=events,
            tenant_id=principal.tenant_id,
            api_key_id=principal.key_id,
            options=scan.options().stored(),
        )
        hours = settings.upload_retention_hours
        expires = utcnow() + timedelta(hours=hours) if hours > 0 else None
        for upload in stored:  # the tenant's hold on each upload (also on a replay: it was uploaded again)
            uploads.hold(
                session,
                principal.tenant_id,
                upload.sha256,
                size=upload.size,
                media_kind=upload.kind,
                expires_at=expires,
            )
        if created:  # counted after the insert, so this submission's own jobs are in; over: rolled back
            state.quotas.check_outstanding(session, principal.key_id, 0)
        out = {
            "submission_id": str(submission.id),
            "jobs": [
                {"job_id": str(job.id), "source": job.source, "filename": filenames[job.seq]}
                for job in new_jobs
            ],
            "created": created,
        }
        unsent = [(job.id, job.priority) for job in new_jobs if job.enqueued_at is None]
    send_jobs(
        state.celery,
        state.sessions,
        unsent,
        per_message=settings.jobs_per_message,
        fair_share=settings.fair_share,
    )
    return out


ROUTERS.append(router)
