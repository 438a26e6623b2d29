"""Run Alembic from code: upgrade a database, ask its revision, detect drift from the models.

The service and ``dfscan scan`` call :func:`upgrade` at start-up; tests call :func:`check_drift`,
which fails loudly when someone edits ``db/models/`` without writing a migration.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from alembic import command
from db.models import Base

log = logging.getLogger(__name__)

# An installed wheel carries the migrations inside this package (setup.py copies them there); a
# checkout (and an editable install) has them at the top of the repository.
_PACKAGED = Path(__file__).resolve().parent / "_alembic"
_CHECKOUT = Path(__file__).resolve().parent.parent / "alembic"
ALEMBIC_DIR = _PACKAGED if (_PACKAGED / "env.py").is_file() else _CHECKOUT
ALEMBIC_INI = ALEMBIC_DIR / "alembic.ini" if ALEMBIC_DIR == _PACKAGED else _CHECKOUT.parent / "alembic.ini"
# Alembic's default comparators plus CHECK constraints compared by name (alembic >= 1.18).
AUTOGENERATE_PLUGINS = ["alembic.autogenerate.*", "alembic.ext.checkconstraint_byname"]


def alembic_config(url: str) -> Config:
    """An Alembic Config for ``url`` that finds the migrations from any working directory."""
    if not (ALEMBIC_DIR / "env.py").is_file():
        raise FileNotFoundError(
            f"no Alembic migrations at {ALEMBIC_DIR}; reinstall dfscan (the wheel carries them in db/_alembic)"
        )
    config = Config(str(ALEMBIC_INI) if ALEMBIC_INI.is_file() else None)
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    # ConfigParser interpolation: a '%' in a password must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # The caller owns logging; do not let alembic.ini's fileConfig reconfigure it.
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (idempotent: a no-op when already there)."""
    log.info("migrating database to %s", revision)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"``: drop every dfscan table)."""
    log.warning("downgrading database to %s", revision)
    command.downgrade(alembic_config(url), revision)


def head() -> str | None:
    """The newest revision in the repo's migrations."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at; None for a database never migrated."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def check_drift(url: str) -> list[Any]:
    """Differences between the migrated database at ``url`` and ``db.models`` (empty list: none).

    Each entry is an Alembic autogenerate diff tuple such as ``("add_column", None, "scan_jobs", col)``.
    Tables, columns, types, nullability, indexes, unique and foreign keys are compared, and CHECK
    constraints by name (Alembic's opt-in ``checkconstraint_byname`` plugin; their SQL text is not
    compared, so the schema tests insert rows that must violate them). Server defaults are not
    compared: ``now()`` and ``CURRENT_TIMESTAMP`` read back differently per backend.
    """
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "autogenerate_plugins": AUTOGENERATE_PLUGINS}
            )
            diffs = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    if diffs:
        kinds = sorted({d[0] if isinstance(d, tuple) else d[0][0] for d in diffs})
        log.warning("database schema differs from db.models in %d places (%s)", len(diffs), ", ".join(kinds))
    return list(diffs)
