"""Reading endpoints: a submission's counts and results, one job, and the tenant's results page.

Every query carries the caller's tenant (``Principal.tenant_id``): another tenant's submission or job id
answers 404 ``UNKNOWN_ID``, exactly like an id that names nothing. A job's JSON object is the one
`dfscan results --format json` prints (``ResultRow.output()``, serialised the same way).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from db import results
from dfscan.api.app import ROUTERS
from dfscan.api.auth import Principal, require_scope, sessions_of
from dfscan.api.errors import ERROR_RESPONSES
from dfscan.exceptions import UnknownIdError

# Largest page of GET /v1/results (and of a submission's results): one answer stays small.
MAX_PAGE = 500
DEFAULT_PAGE = 100

router = APIRouter(prefix="/v1", tags=["results"], responses=ERROR_RESPONSES)


class JobResult(BaseModel):
    """One job and its outcome: the object `dfscan results --format json` prints. Times are as that
    command prints them (``2026-12-04 21:03:07.123456+00:00``); absent fields are null."""

    model_config = ConfigDict(extra="allow")

    job_id: uuid.UUID
    submission_id: uuid.UUID
    seq: int
    source: str
    status: Literal["queued", "running", "done", "failed"]
    label: str | None = None
    fake_score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    error_code: str | None = None
    error: str | None = None
    attempts: int
    created_at: str
    finished_at: str | None = None


class SubmissionStatus(BaseModel):
    submission_id: uuid.UUID
    client_ref: str | None
    created_at: datetime
    counts: dict[str, int]
    done: bool


class ResultsPage(BaseModel):
    results: list[JobResult]
    next_cursor: uuid.UUID | None


def public(row: results.ResultRow) -> dict[str, Any]:
    """A result row as JSON values, serialised as `dfscan results --format json` does."""
    out: dict[str, Any] = json.loads(json.dumps(row.output(), default=str))
    return out


@router.get(
    "/submissions/{submission_id}", response_model=SubmissionStatus, summary="Counts of jobs by state"
)
def get_submission(
    submission_id: uuid.UUID, request: Request, principal: Principal = Depends(require_scope("read"))
) -> SubmissionStatus:
    with sessions_of(request)() as session:
        sub = results.get_submission(session, submission_id, tenant_id=principal.tenant_id)
        if sub is None:
            raise UnknownIdError(f"no submission {submission_id}")
        counts = results.submission_counts(session, submission_id, tenant_id=principal.tenant_id)
    return SubmissionStatus(
        submission_id=sub.id,
        client_ref=sub.client_ref,
        created_at=sub.created_at,
        counts=counts,
        done=counts["done"] + counts["failed"] >= counts["total"],
    )


@router.get(
    "/submissions/{submission_id}/results",
    response_model=ResultsPage,
    summary="A submission's jobs with their results, in source order",
)
def get_submission_results(
    submission_id: uuid.UUID, request: Request, principal: Principal = Depends(require_scope("read"))
) -> JSONResponse:
    with sessions_of(request)() as session:
        if results.get_submission(session, submission_id, tenant_id=principal.tenant_id) is None:
            raise UnknownIdError(f"no submission {submission_id}")
        rows = results.results(session, submission_id=submission_id, tenant_id=principal.tenant_id)
    return JSONResponse({"results": [public(row) for row in rows], "next_cursor": None})


@router.get("/jobs/{job_id}", response_model=JobResult, summary="One job and its result")
def get_job(
    job_id: uuid.UUID, request: Request, principal: Principal = Depends(require_scope("read"))
) -> JSONResponse:
    with sessions_of(request)() as session:
        rows = results.results(session, job_ids=[job_id], tenant_id=principal.tenant_id)
    if not rows:
        raise UnknownIdError(f"no job {job_id}")
    return JSONResponse(public(rows[0]))


@router.get(
    "/results", response_model=ResultsPage, summary="The tenant's results, newest first, a page at a time"
)
def list_results(
    request: Request,
    principal: Principal = Depends(require_scope("read")),
    client_ref: str | None = Query(None, max_length=255),
    label: Literal["fake", "real", "not_applicable"] | None = None,
    code: str | None = Query(None, max_length=64, description="Only jobs failed with this error code."),
    since: datetime | None = Query(None, description="Only jobs finished at or after this ISO time."),
    limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
    cursor: uuid.UUID | None = Query(None, description="next_cursor of the page before."),
) -> JSONResponse:
    if since is not None and since.tzinfo is None:
        from datetime import timezone

        since = since.replace(tzinfo=timezone.utc)
    with sessions_of(request)() as session:
        page = results.page(
            session,
            label=label,
            since=since,
            client_ref=client_ref,
            error_code=code.strip().upper() if code else None,
            limit=limit,
            cursor=cursor,
            tenant_id=principal.tenant_id,
        )
    return JSONResponse(
        {
            "results": [public(row) for row in page.rows],
            "next_cursor": str(page.next_cursor) if page.next_cursor else None,
        }
    )


ROUTERS.append(router)
