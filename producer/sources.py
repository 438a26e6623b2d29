"""Turn `dfscan submit` arguments into sources: URLs, paths, folders, ``@FILE`` lists and stdin.

Paths are sent as absolute paths; a worker reads them only under its own ``DFSCAN_ALLOWED_ROOTS``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path


def _lines(lines: Iterable[str]) -> list[str]:
    out = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(text)
    return out


def list_folder(folder: Path, *, recursive: bool) -> list[str]:
    """The files in ``folder`` (sorted; with ``recursive``, also in its sub-folders, depth first)."""
    if not recursive:
        return [str(child) for child in sorted(folder.iterdir()) if not child.is_dir()]
    files: list[str] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        files.extend(str(Path(root) / name) for name in sorted(names))
    return files


def expand_targets(targets: Iterable[str], *, recursive: bool = False) -> list[str]:
    sources: list[str] = []
    for target in targets:
        if target == "-":
            sources.extend(_lines(sys.stdin))
        elif target.startswith("@"):
            sources.extend(_lines(Path(target[1:]).read_text(encoding="utf-8").splitlines()))
        elif "://" in target:
            sources.append(target)
        elif os.path.isdir(target):
            sources.extend(list_folder(Path(target).absolute(), recursive=recursive))
        else:
            sources.append(str(Path(target).absolute()))
    return sources
