"""Request bodies are bounded before they are paid for: a byte cap and a deadline, in pure ASGI.

- A declared ``Content-Length`` over the cap answers 413 ``TOO_LARGE`` at once; the body is never read.
- A body without a length (chunked) is counted as it arrives and refused the moment it passes the cap.
- The whole body must arrive within DFSCAN_API_BODY_TIMEOUT: a client trickling bytes gets 408
  ``REQUEST_TIMEOUT`` instead of holding a connection slot (and, through it, the server) for ever.

The cap depends on the kind of body: JSON and forms (DFSCAN_API_MAX_JSON_BYTES) or a multipart upload
(room for DFSCAN_API_MAX_FILES files at the per-file caps).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dfscan.api.errors import dfscan_error_response
from dfscan.exceptions import RequestTimeoutError, TooLargeError
from dfscan.settings import Settings


def upload_cap(settings: Settings) -> int:
    """Bytes one multipart request may carry: each file at its cap, and room for the part headers."""
    per_file = max(settings.max_bytes, settings.max_video_bytes)
    return settings.api_max_files * per_file + 64 * 1024


class BodyGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.json_cap = settings.api_max_json_bytes
        self.upload_cap = upload_cap(settings)
        self.timeout = settings.api_body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        multipart = headers.get("content-type", "").lower().startswith("multipart/")
        cap = self.upload_cap if multipart else self.json_cap
        declared = headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length > cap:
                response = dfscan_error_response(
                    TooLargeError(f"the request body declares {length} bytes; at most {cap} are accepted")
                )
                await response(scope, receive, send)
                return
        deadline = time.monotonic() + self.timeout
        received = 0
        complete = False

        async def guarded() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: what follows (a disconnect) has no deadline
                return await receive()
            remaining = deadline - time.monotonic()
            try:
                message: dict[str, Any] = dict(await asyncio.wait_for(receive(), max(remaining, 0.001)))
            except asyncio.TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.timeout:g} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > cap:
                    raise TooLargeError(f"the request body is larger than {cap} bytes")
            return message

        await self.app(scope, guarded, send)
