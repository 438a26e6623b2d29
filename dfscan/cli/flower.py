"""`dfscan flower`: Flower behind basic auth on every path, bound to loopback unless told otherwise.

Flower 2.2 as shipped has three holes this module closes (read in flower/options.py, command.py,
views/__init__.py and views/monitor.py):

- ``basic_auth`` is a Tornado ``multiple=True`` option: ``--basic-auth=admin:C0rrect-Horse,x``
  (and ``FLOWER_BASIC_AUTH``) is split on commas into two credentials, ``admin:C0rrect-Horse`` and a
  bare ``x``. dfscan never passes the credential through the command line: it sets the option to a
  one-element list after Flower has parsed its arguments, so a comma is an ordinary character.
- ``/metrics``, ``/healthcheck``, ``/static/...`` and the 404 handler never ask for the user. dfscan
  installs a gate in front of Flower's router (``Flower.find_handler``), so every request, whatever
  its path, needs the credential; Flower's own check then runs as before.
- Flower listens on every interface by default; dfscan binds ``DFSCAN_FLOWER_ADDRESS``
  (127.0.0.1 unless widened).

Flower compares credentials with ``hmac.compare_digest`` on ``str``, which raises for non-ASCII
text (every request would be a 500), so user and password must be printable ASCII; a user may not
contain ``:`` (RFC 7617). Blank or whitespace-only values are refused.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import Any

from dfscan.exceptions import ConfigError
from dfscan.settings import Settings

log = logging.getLogger(__name__)

REALM = "dfscan flower"


def flower_credential(user: str, password: str) -> str:
    """``user:password`` for Flower's basic auth, or CONFIG_ERROR saying what is wrong with it."""
    if not password:
        raise ConfigError(
            "set DFSCAN_FLOWER_PASSWORD (and DFSCAN_FLOWER_USER, default admin): Flower is not started "
            "without authentication"
        )
    for name, value in (("DFSCAN_FLOWER_USER", user), ("DFSCAN_FLOWER_PASSWORD", password)):
        if not value.strip():
            raise ConfigError(f"{name} is blank or only whitespace: set a real value")
        if not all(" " <= char <= "~" for char in value):
            raise ConfigError(
                f"{name} must be printable ASCII (Flower compares credentials as ASCII text; other "
                "characters would make every request fail)"
            )
    if ":" in user:
        raise ConfigError(
            "DFSCAN_FLOWER_USER must not contain ':' (basic auth splits user and password there)"
        )
    if user != user.strip():
        raise ConfigError("DFSCAN_FLOWER_USER has leading or trailing spaces")
    return f"{user}:{password}"


def authorized(header: str | None, credential: str) -> bool:
    """Whether an ``Authorization`` header carries exactly ``credential`` (constant-time compare)."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, credential.encode("ascii"))


def install_gate(credential: str) -> None:
    """Require ``credential`` on every request Flower routes, and make it Flower's only credential."""
    import tornado.web
    from flower import command
    from flower.app import Flower

    class Unauthorized(tornado.web.RequestHandler):
        def prepare(self) -> None:
            self.set_status(401)
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}"')
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish("401: authentication required\n")

    route = Flower.find_handler

    def find_handler(self: Flower, request: Any, **kwargs: Any) -> Any:
        if not authorized(request.headers.get("Authorization"), credential):
            return self.get_handler_delegate(request, Unauthorized)
        return route(self, request, **kwargs)

    Flower.find_handler = find_handler  # type: ignore[method-assign]

    apply_options = command.apply_options

    def apply_then_set_credential(prog_name: str, argv: Any) -> None:
        apply_options(prog_name, argv)  # env, config file, command line: may have set basic_auth
        command.options.basic_auth = [credential]  # one credential, never split on commas

    command.apply_options = apply_then_set_credential


def run_flower(settings: Settings, *, port: int | None, address: str | None = None) -> None:
    """Flower on ``address:port`` (default DFSCAN_FLOWER_ADDRESS, 127.0.0.1), basic auth on every path."""
    credential = flower_credential(settings.flower_user, settings.flower_password.get_secret_value())
    from dfscan.queueing import new_celery_app

    install_gate(credential)
    bind = address if address is not None else settings.flower_address
    app = new_celery_app(settings)
    port = port or settings.fixed("flower_port")
    log.info("Flower on %s:%s with basic auth on every path", bind, port)
    app.start(["flower", f"--port={port}", f"--address={bind}", "--persistent=False"])
