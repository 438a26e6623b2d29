"""Ship the Alembic migrations inside the wheel.

The migrations live at the top of the repository (``alembic/``, ``alembic.ini``), where Alembic's own
tooling expects them. A wheel has no such top: this build step copies them into the ``db`` package
as ``db/_alembic/`` so that an installed ``dfscan db upgrade`` finds them (``db/migrate.py`` looks there
first, then beside the checkout). Everything else about the build is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class build_py_with_migrations(build_py):  # noqa: N801 (setuptools' naming)
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "db" / "_alembic"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(
            HERE / "alembic",
            target,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        shutil.copy2(HERE / "alembic.ini", target / "alembic.ini")


setup(cmdclass={"build_py": build_py_with_migrations})
