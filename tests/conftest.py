"""Test tiers by folder: tests/unit (pure, CPU, seconds), tests/integration (real Redis, Postgres and
worker processes), tests/e2e (the CLI end to end). Each test is marked with its tier, so
`pytest -m unit` runs the fast tier alone."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.databases", "tests.fixtures.service"]

_TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
