"""API keys to principals: ``Authorization: Bearer <key>`` names a tenant and what the caller may do.

- no key, a malformed one, an unknown or a revoked one: 401 ``UNAUTHENTICATED``;
- a key without the endpoint's scope: 403 ``FORBIDDEN``;
- everything read or written afterwards is filtered by ``Principal.tenant_id`` in the query, so another
  tenant's ids answer 404 as if they did not exist.

Keys never reach a log line, an error message or a metric: only their SHA-256 is looked up.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from db.tenants import SCOPES, find_key
from dfscan.exceptions import ForbiddenError, UnauthenticatedError

__all__ = ["SCOPES", "Principal", "authenticate", "require_scope", "sessions_of"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's tenant, the key, and its scopes."""

    tenant_id: uuid.UUID
    key_id: uuid.UUID
    scopes: frozenset[str]


def authenticate(session: Session, raw_key: str) -> Principal | None:
    """The principal of a live key; None for an unknown, malformed or revoked one."""
    owner = find_key(session, raw_key)
    if owner is None:
        return None
    return Principal(tenant_id=owner.tenant_id, key_id=owner.key_id, scopes=owner.scopes)


def sessions_of(request: Request) -> sessionmaker[Session]:
    """The app's session factory (``create_app`` puts it on ``app.state.sessions``)."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


_bearer = HTTPBearer(auto_error=False, description="An API key from `dfscan keys create`.")


def require_scope(scope: str) -> Callable[..., Principal]:
    """A FastAPI dependency: the caller's :class:`Principal`, when its key has ``scope``.

    Use as ``principal: Principal = Depends(require_scope("read"))``. The principal is also left on
    ``request.state.principal`` for middleware that runs later (quotas, logs)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; one of {SCOPES}")

    def dependency(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> Principal:
        if credentials is None or not credentials.credentials:
            raise UnauthenticatedError("send an API key: Authorization: Bearer <key>")
        with sessions_of(request)() as session:
            principal = authenticate(session, credentials.credentials)
        if principal is None:
            raise UnauthenticatedError("the API key is unknown or revoked")
        request.state.principal = principal
        quotas = getattr(request.app.state, "quotas", None)
        if quotas is not None:  # every authenticated request counts against the key's rate
            quotas.hit(principal.key_id)
        if scope not in principal.scopes:
            raise ForbiddenError(f"this API key lacks the {scope!r} scope")
        return principal

    dependency.__name__ = f"require_scope_{scope}"
    return dependency
