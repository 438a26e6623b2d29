"""Alembic environment for dfscan: one schema for PostgreSQL and SQLite.

The URL comes from the Config's ``sqlalchemy.url`` when set (``db.migrate`` sets it), otherwise from
``DFSCAN_DATABASE_URL`` (default ``sqlite:///dfscan.db``, the same default as the settings), so
``alembic -c alembic.ini upgrade head`` works from a shell. SQLite gets batch mode, which rebuilds a
table for the ALTERs SQLite cannot do in place.
"""

from __future__ import annotations

import logging.config
import os
from typing import Any, Literal

from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from alembic import context
from db.models import Base, UtcDateTime

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url or os.environ.get("DFSCAN_DATABASE_URL", "sqlite:///dfscan.db")


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render dfscan's column types as plain SQLAlchemy types so migrations never import the models."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        autogenerate_plugins=["alembic.autogenerate.*", "alembic.ext.checkconstraint_byname"],
        render_item=render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = database_url()
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            _run_on(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
