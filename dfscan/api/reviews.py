"""``POST /v1/jobs/{id}/review``: a reviewer's decision on a job's verdict, through the API.

The same write as the console's buttons (``db.reviews.record``): a row in ``reviews`` (history kept, the latest
counts) and a signed ``job.reviewed`` webhook event in the same transaction. Needs the ``review`` scope;
another tenant's job, or a job without a verdict, answers 404 ``UNKNOWN_ID``.
"""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from db import reviews
from dfscan.api.app import ROUTERS
from dfscan.api.auth import Principal, require_scope, sessions_of
from dfscan.api.errors import ERROR_RESPONSES
from dfscan.exceptions import UnknownIdError

router = APIRouter(prefix="/v1", tags=["reviews"], responses=ERROR_RESPONSES)


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["fake", "real", "not_applicable", "escalate"]
    note: str | None = Field(None, max_length=reviews.MAX_NOTE)

    @field_validator("note")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("a note cannot hold a NUL character")
        return value


class ReviewOut(BaseModel):
    """The ``review`` object of a job's result: the latest decision on its verdict."""

    decision: Literal["fake", "real", "not_applicable", "escalate"]
    note: str | None
    reviewer_key_id: uuid.UUID | None
    reviewed_at: str


@router.post(
    "/jobs/{job_id}/review",
    status_code=201,
    response_model=ReviewOut,
    summary="Record a reviewer's decision on a job's verdict (the latest decision counts)",
)
def post_review(
    job_id: uuid.UUID,
    body: ReviewIn,
    request: Request,
    principal: Principal = Depends(require_scope("review")),
) -> ReviewOut:
    with sessions_of(request)() as session, session.begin():
        entry = reviews.record(
            session,
            tenant_id=principal.tenant_id,
            job_id=job_id,
            decision=body.decision,
            note=body.note,
            api_key_id=principal.key_id,
        )
    if entry is None:
        raise UnknownIdError(f"no judged job {job_id}")
    return ReviewOut.model_validate(entry.output())


ROUTERS.append(router)
