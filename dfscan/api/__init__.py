"""The HTTP API (`dfscan api`): FastAPI routers over the same database functions the CLI and ScanClient use.

- ``app.py``: ``create_app(settings)`` and ``ROUTERS``, the routers it includes;
- ``auth.py``: API keys to a :class:`~dfscan.api.auth.Principal` (tenant, key, scopes), ``require_scope``;
- ``errors.py``: the one error body ``{"error": {"code", "message"}}`` and the handlers that make it.
"""
