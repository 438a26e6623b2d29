"""One error body for every answer that is not a success: ``{"error": {"code": "...", "message": "..."}}``.

Codes are the stable codes of ``dfscan/exceptions.py``; :data:`STATUS` gives each its HTTP status.
Handlers turn what FastAPI and Starlette raise (unknown paths, malformed JSON, validation errors) and
anything unexpected into that body, so no answer is an HTML page or a bare 500 with a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from dfscan.exceptions import (
    BadArgumentError,
    BadOptionError,
    BlockedDestinationError,
    CallbackUrlTooLongError,
    DfscanError,
    ForbiddenError,
    IdempotencyConflictError,
    MalformedRequestError,
    PathNotAllowedError,
    QueueFullError,
    RateLimitedError,
    RequestTimeoutError,
    TooLargeError,
    UnauthenticatedError,
    UnknownEndpointError,
    UnknownIdError,
    UnsupportedFormatError,
    UnsupportedSourceError,
)
from dfscan.urlguard import mask_url_credentials

log = logging.getLogger(__name__)

STATUS: dict[str, int] = {
    BadArgumentError.code: 422,
    BadOptionError.code: 422,
    MalformedRequestError.code: 400,
    UnsupportedSourceError.code: 422,
    PathNotAllowedError.code: 422,
    BlockedDestinationError.code: 422,
    CallbackUrlTooLongError.code: 422,
    UnauthenticatedError.code: 401,
    ForbiddenError.code: 403,
    UnknownIdError.code: 404,
    UnknownEndpointError.code: 404,
    RequestTimeoutError.code: 408,
    IdempotencyConflictError.code: 409,
    TooLargeError.code: 413,
    UnsupportedFormatError.code: 415,
    RateLimitedError.code: 429,
    QueueFullError.code: 503,
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    error: ErrorDetail


# For the OpenAPI document: every endpoint may answer these with ErrorBody.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    text = mask_url_credentials(" ".join(str(message).split()))
    return JSONResponse({"error": {"code": code, "message": text}}, status_code=status, headers=headers)


def dfscan_error_response(exc: DfscanError) -> JSONResponse:
    headers = None
    if isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, QueueFullError):
        headers = {"Retry-After": "5"}
    if isinstance(exc, UnauthenticatedError):
        headers = {"WWW-Authenticate": "Bearer"}
    # A code without its own status: the input itself is bad (a corrupt or empty image sent to match)
    # is the client's to fix, 422; a transient one (the database is down) is 503, never a bare 500.
    status = STATUS.get(exc.code, 422 if exc.permanent else 503)
    return error_response(status, exc.code, exc.message, headers)


async def _dfscan_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DfscanError)
    return dfscan_error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(404, UnknownEndpointError.code, f"no endpoint {request.url.path}")
    if exc.status_code == 405:
        return error_response(
            405,
            UnknownEndpointError.code,
            f"{request.method} is not allowed on {request.url.path}",
            dict(exc.headers or {}),
        )
    code = MalformedRequestError.code if exc.status_code == 400 else "HTTP_" + str(exc.status_code)
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


def _where(loc: Any) -> str:
    parts = [str(part) for part in loc if part != "body"] if isinstance(loc, (list, tuple)) else [str(loc)]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(400, MalformedRequestError.code, "the request body is not valid JSON")
    # Say where and what, never echo the input (it may be large, or hold a secret the client misplaced).
    parts = [f"{_where(error.get('loc', ()))}: {error.get('msg', 'invalid')}" for error in errors[:10]]
    return error_response(422, BadArgumentError.code, "; ".join(parts) or "invalid request")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "INTERNAL_ERROR", "an unexpected error happened; the server log has details")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DfscanError, _dfscan_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
