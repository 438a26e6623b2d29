"""The FastAPI application of `dfscan api`.

``create_app(settings)`` builds one app: a database engine and session factory (``app.state.sessions``),
a Redis client (``app.state.redis``), the error handlers, and every router in :data:`ROUTERS`. The app
keeps no state of its own between requests: N replicas behind any load balancer share Postgres and Redis.

Other parts of dfscan add endpoints by appending an ``APIRouter`` to :data:`ROUTERS` at import time, in
a module that :func:`create_app` imports (see :data:`ROUTER_MODULES`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from alembic.migration import MigrationContext
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from dfscan.api.bodies import BodyGuard
from dfscan.api.errors import install_handlers
from dfscan.api.quotas import Quotas
from dfscan.queueing import new_celery_app
from dfscan.settings import Settings, get_settings
from dfscan.uploads import new_store

log = logging.getLogger(__name__)

# Routers create_app includes, in order. A module adding endpoints appends its router here.
ROUTERS: list[APIRouter] = []
# Modules imported by create_app before it includes ROUTERS (each appends its router when imported).
ROUTER_MODULES: list[str] = [
    "dfscan.api.scans",
    "dfscan.api.results",
    "dfscan.api.reviews",
    "dfscan.api.matches",
    "dfscan.console.web",
]

health = APIRouter(tags=["health"])


@health.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/readyz", summary="Postgres and Redis answer and the schema is at the latest migration")
def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with request.app.state.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        head = request.app.state.schema_head
        checks["postgres"] = "ok" if current == head else f"schema at {current}, expected {head}"
    except Exception as exc:  # any failure means: not ready
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    try:
        request.app.state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ok" if ready else "not ready", "checks": checks}, 200 if ready else 503)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: the process's settings)."""
    from db.migrate import head
    from db.session import new_engine, new_session_factory

    settings = settings or get_settings()
    for module in ROUTER_MODULES:
        importlib.import_module(module)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.engine.dispose()
        app.state.redis.close()

    app = FastAPI(
        title="dfscan",
        summary="Scan images and videos for deepfakes.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = new_engine(settings.database_url)
    app.state.sessions = new_session_factory(app.state.engine)
    app.state.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
    app.state.schema_head = head()
    app.state.celery = new_celery_app(settings)
    app.state.uploads = new_store(settings.upload_store)
    app.state.quotas = Quotas(settings)
    app.add_middleware(BodyGuard, settings=settings)
    install_handlers(app)
    app.include_router(health)
    seen: set[int] = set()
    for router in ROUTERS:
        if id(router) not in seen:  # a module imported twice must not mount its routes twice
            seen.add(id(router))
            app.include_router(router)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dfscan")
    except PackageNotFoundError:
        return "0"


def run(settings: Settings, *, host: str, port: int, **uvicorn_options: Any) -> None:
    """Serve the API with uvicorn (`dfscan api`).

    Slow or idle clients are bounded: an idle keep-alive connection closes after 5 s, a request's
    headers must fit h11's 16 KiB, its body must arrive within DFSCAN_API_BODY_TIMEOUT (BodyGuard), and
    past DFSCAN_API_MAX_CONNECTIONS concurrent connections new requests get 503 at once."""
    import uvicorn

    options: dict[str, Any] = {
        "timeout_keep_alive": 5,
        "limit_concurrency": settings.api_max_connections,
        "server_header": False,
        "proxy_headers": False,
        **uvicorn_options,
    }
    uvicorn.run(create_app(settings), host=host, port=port, **options)
