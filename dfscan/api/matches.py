"""Match a hash or a file against the tenant's hash banks, the shared banks and the tenant's own verdicts,
without judging it (docs/near-duplicates.md).

``POST /v1/matches/hash`` takes a PDQ hash as ThreatExchange writes it; ``POST /v1/matches/file`` takes the
bytes of an image (the request body), decodes it under the same limits as judging and hashes it as the
worker does (PDQ and its 8 dihedral variants). Both answer the bank entries matched and the tenant's own
earlier jobs within the distance. The index is the worker's (worker/near.py), one per API process, kept in
step with Postgres the same way.
"""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from dfscan.api.app import ROUTERS
from dfscan.api.auth import Principal, require_scope, sessions_of
from dfscan.api.errors import ERROR_RESPONSES
from dfscan.exceptions import BadArgumentError, TooLargeError

router = APIRouter(prefix="/v1/matches", tags=["matches"], responses=ERROR_RESPONSES)


class HashQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pdq: str = Field(description="A PDQ hash: 64 hex digits.", min_length=64, max_length=64)
    quality: int = Field(100, ge=0, le=100, description="Its quality, if known (under the floor: no match).")


class BankMatchOut(BaseModel):
    bank: str
    id: str
    distance: int


class JobMatchOut(BaseModel):
    job_id: uuid.UUID
    distance: int


class MatchResult(BaseModel):
    pdq: str
    quality: int
    matches: list[BankMatchOut]
    near_duplicates: list[JobMatchOut]


def _index(request: Request):  # type: ignore[no-untyped-def]
    """The API process's near-duplicate index, made on first use."""
    from worker.inference.factory import near_policy
    from worker.near import NearIndex

    state = request.app.state
    if getattr(state, "near", None) is None:
        state.near = NearIndex(sessions_of(request), near_policy(state.settings))
    return state.near


def _answer(request: Request, principal: Principal, hashed, pdq: str, quality: int) -> MatchResult:  # type: ignore[no-untyped-def]
    matches, jobs = _index(request).match(hashed, principal.tenant_id)
    return MatchResult(
        pdq=pdq,
        quality=quality,
        matches=[BankMatchOut(bank=m.bank, id=m.id, distance=m.distance) for m in matches],
        near_duplicates=[JobMatchOut(job_id=job_id, distance=distance) for job_id, distance in jobs],
    )


@router.post("/hash", response_model=MatchResult, summary="Match a PDQ hash without judging")
def match_hash(
    body: HashQuery, request: Request, principal: Principal = Depends(require_scope("read"))
) -> MatchResult:
    from worker.inference.hashing.pdq import MediaHash, Pdq

    try:
        pdq = Pdq.from_hex(body.pdq, body.quality)
    except ValueError as exc:
        raise BadArgumentError(f"pdq: {exc}") from exc
    return _answer(request, principal, MediaHash((pdq,)), pdq.hex, pdq.quality)


@router.post(
    "/file",
    response_model=MatchResult,
    summary="Match an image (the request body) without judging",
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def match_file(request: Request, principal: Principal = Depends(require_scope("read"))) -> MatchResult:
    from worker.inference.factory import image_policy
    from worker.inference.hashing.pdq import MediaHash, pdq_dihedral
    from worker.inference.images.decode import decode_in_process

    settings = request.app.state.settings
    data = await request.body()
    if len(data) > settings.max_bytes:
        raise TooLargeError(f"the image is over {settings.max_bytes} bytes (DFSCAN_MAX_BYTES)")

    def hashed():  # type: ignore[no-untyped-def]
        image, _size = decode_in_process(data, image_policy(settings))
        return pdq_dihedral(image)

    pdq, variants = await asyncio.to_thread(hashed)
    result = await asyncio.to_thread(
        _answer, request, principal, MediaHash((pdq,), variants), pdq.hex, pdq.quality
    )
    return result


ROUTERS.append(router)
