"""`dfscan worker` start-up: glibc allocator defaults (unless the environment chose its own) and task
threads reserved for the interactive lane."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from dfscan.cli.service import ALLOCATOR_DEFAULTS, interactive_threads, tune_allocator


def _glibc() -> bool:
    try:
        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="glibc only")
def test_the_allocator_defaults_are_applied_and_inherited_by_children() -> None:
    # A fresh interpreter: mallopt changes the process that calls it.
    code = (
        "import os, sys; from dfscan.cli.service import tune_allocator; env = {}; "
        "print(tune_allocator(env), env['MALLOC_ARENA_MAX'], env['MALLOC_MMAP_THRESHOLD_'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", str(ALLOCATOR_DEFAULTS["MALLOC_ARENA_MAX"]), "131072"]


def test_an_environment_that_names_either_setting_keeps_its_own_allocator() -> None:
    for name in ALLOCATOR_DEFAULTS:
        env = {name: "16"}
        assert tune_allocator(env) is False
        assert env == {name: "16"}


def test_a_quarter_more_task_threads_are_kept_for_the_interactive_lane() -> None:
    assert [interactive_threads(n) for n in (1, 3, 4, 8, 16, 32)] == [1, 1, 1, 2, 4, 8]
