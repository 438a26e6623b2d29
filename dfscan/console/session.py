"""The console's sign-in: a signed, HttpOnly, SameSite=Strict cookie, and CSRF tokens bound to it.

The cookie carries the API key's id, its tenant and a random CSRF token, signed with DFSCAN_CONSOLE_SECRET
(itsdangerous, HMAC-SHA256 with a salt of its own) and timestamped; it never carries the key itself. Every
request checks the signature and age, then looks the key up again (still live, same tenant, ``review``
scope), so a revoked key ends its sessions at once and a cookie edited to name another tenant fails both
the signature and the lookup. A form's token must equal the session's (``hmac.compare_digest``); before
sign-in a short-lived signed cookie holds the sign-in form's token (double submit).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

log = logging.getLogger(__name__)

SESSION_COOKIE = "dfscan_console"
LOGIN_COOKIE = "dfscan_console_login"
LOGIN_MAX_AGE = 3600  # an open sign-in page stays usable for an hour


@dataclass(frozen=True)
class ConsoleSession:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    csrf: str


class Signer:
    """Signs and reads the two cookies. A blank secret gets a random per-process one (logged once)."""

    def __init__(self, secret: str, *, max_age_s: float) -> None:
        if not secret:
            log.warning(
                "DFSCAN_CONSOLE_SECRET is not set: console sign-ins last until this process restarts and "
                "hold on this replica only"
            )
            secret = secrets.token_urlsafe(32)
        self.max_age_s = max_age_s
        self._session = URLSafeTimedSerializer(secret, salt="dfscan.console.session")
        self._login = URLSafeTimedSerializer(secret, salt="dfscan.console.login")

    def session_cookie(self, key_id: uuid.UUID, tenant_id: uuid.UUID) -> tuple[str, ConsoleSession]:
        session = ConsoleSession(key_id, tenant_id, secrets.token_urlsafe(32))
        value = self._session.dumps({"k": str(key_id), "t": str(tenant_id), "c": session.csrf})
        return value, session

    def read_session(self, value: str | None) -> ConsoleSession | None:
        if not value:
            return None
        try:
            data = self._session.loads(value, max_age=int(self.max_age_s))
            return ConsoleSession(uuid.UUID(data["k"]), uuid.UUID(data["t"]), str(data["c"]))
        except (BadSignature, KeyError, TypeError, ValueError):
            return None

    def login_cookie(self) -> tuple[str, str]:
        token = secrets.token_urlsafe(32)
        return self._login.dumps(token), token

    def read_login(self, value: str | None) -> str | None:
        if not value:
            return None
        try:
            token = self._login.loads(value, max_age=LOGIN_MAX_AGE)
        except BadSignature:
            return None
        return token if isinstance(token, str) else None


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; a missing token on either side never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
