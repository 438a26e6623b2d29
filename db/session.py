"""Engines and sessions for PostgreSQL (the service) and SQLite (a laptop scan).

``new_engine`` sets what each backend needs to behave like a real database:

- PostgreSQL: ``pool_pre_ping`` so a connection dropped by a restarted server is replaced instead of
  failing the next job.
- SQLite: WAL (readers do not block the writer), foreign keys on (off by default in SQLite), a busy
  timeout so concurrent writers wait instead of failing at once, ``check_same_thread=False`` so a
  pool can hand connections to worker threads, and real ``BEGIN``/``SAVEPOINT`` handling (pysqlite's
  own transaction emulation breaks savepoints).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000  # a laptop scan has a few writer threads; 30 s outlasts any one commit

# A database that cannot be reached or answered (the world may heal: retry), as opposed to a statement
# it refused (DataError, IntegrityError, ProgrammingError: the same statement fails again: permanent).
# psycopg2 classes a refused connection, a restart, a deadlock and a statement timeout as
# OperationalError; InterfaceError is a connection already closed; DisconnectionError and the pool's
# TimeoutError come from SQLAlchemy's pool.
_OUTAGES = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unavailable, not that it refused the data."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _OUTAGES)


def new_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the per-backend settings above; ``kwargs`` go to ``create_engine``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        in_memory = parsed.database in (None, "", ":memory:")
        _configure_sqlite(engine, wal=not in_memory)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (see the "begin" hook) so SAVEPOINTs work.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


def new_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``. Objects stay readable after commit (``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
