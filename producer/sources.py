"""Turn `dfscan submit` arguments into sources: URLs, paths, folders, ``@FILE`` lists and stdin.

Paths are sent as absolute paths; a worker reads them only under its own ``DFSCAN_ALLOWED_ROOTS``.

A source is text (a database ``text`` column, a JSON message), but a Linux file name is bytes and
need not be UTF-8. Such a name (Python reads it with lone surrogates, which no database or JSON
encoder accepts) is spelled as a ``file:`` URL with every byte outside ``[A-Za-z0-9-._~/]``
percent-escaped (``file:///srv/up/bad%FF.png``, RFC 8089): unambiguous, ASCII, and exactly
reversible. Every other name is sent as the path itself, unchanged. Workers read such URLs as paths,
under every path rule (``worker/inference/sources/read.py``), and refuse any other ``file:`` URL.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote


def _lines(lines: Iterable[bytes]) -> list[str]:
    """Sources from a list, one a line. Lines are bytes: a path that is not UTF-8 becomes its ``file:``
    URL (``path_source``), and the bytes of a URL that are not UTF-8 are percent-escaped."""
    out = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if b"://" not in line:
            out.append(path_source(os.fsdecode(line)))
        else:
            out.append("".join(chr(byte) if byte < 0x80 else f"%{byte:02X}" for byte in line)
                       if not _is_utf8(line) else line.decode("utf-8"))  # fmt: skip
    return out


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def path_source(path: str | os.PathLike[str]) -> str:
    """The source text for a local path: the path itself, or (a name that is not UTF-8) its
    percent-escaped absolute ``file:`` URL."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogateescape: the name has bytes that are not UTF-8
        return "file://" + quote(os.fsencode(os.path.abspath(text)), safe="/")
    return text


def list_folder(folder: Path, *, recursive: bool) -> list[str]:
    """The files in ``folder`` (sorted; with ``recursive``, also in its sub-folders, depth first)."""
    if not recursive:
        return [path_source(child) for child in sorted(folder.iterdir()) if not child.is_dir()]
    files: list[str] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        files.extend(path_source(Path(root) / name) for name in sorted(names))
    return files


def expand_targets(targets: Iterable[str], *, recursive: bool = False) -> list[str]:
    sources: list[str] = []
    for target in targets:
        if target == "-":
            sources.extend(_lines(sys.stdin.buffer))
        elif target.startswith("@"):
            sources.extend(_lines(Path(target[1:]).read_bytes().splitlines()))
        elif "://" in target:
            sources.append(target)
        elif os.path.isdir(target):
            sources.extend(list_folder(Path(target).absolute(), recursive=recursive))
        else:
            sources.append(path_source(Path(target).absolute()))
    return sources
