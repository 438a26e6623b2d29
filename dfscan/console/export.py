"""Reviewed media as training data: the image-folder layout ``dfscan train`` reads.

``DIR/fake/<job_id>.<ext>`` and ``DIR/real/<job_id>.<ext>`` for every reviewed image whose latest decision is
fake or real and whose bytes are still held, plus ``DIR/manifest.json`` naming every job considered and what
became of it (written, or skipped and why), so an export can be audited and a training run traced back to
the decisions it learned from. Standard library only; where the rows and bytes come from is the caller's
business (``dfscan reviews export`` reads the ``reviews`` table and the upload store).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# What `dfscan train` reads (worker.training.data.IMAGE_SUFFIXES) by the format the worker sniffed.
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
TRAINABLE = ("fake", "real")


@dataclass(frozen=True)
class Decided:
    """One reviewed job: its latest decision and how to read its bytes (None when they are no longer held)."""

    job_id: str
    decision: str
    media: str
    image_format: str | None
    image_sha256: str
    decided_at: datetime
    read: Callable[[], bytes | None]


@dataclass(frozen=True)
class ExportReport:
    written: dict[str, int]
    skipped: dict[str, int]
    manifest: Path


def export(items: Iterable[Decided], out: Path, *, tenant: str, since: datetime) -> ExportReport:
    """Write ``items`` under ``out`` (made if missing; files already there are replaced, others are kept)."""
    out = Path(out)
    for label in TRAINABLE:
        (out / label).mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    written = dict.fromkeys(TRAINABLE, 0)
    skipped: dict[str, int] = {}

    def skip(item: Decided, reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1
        entries.append({"job_id": item.job_id, "decision": item.decision, "skipped": reason})

    for item in items:
        if item.decision not in TRAINABLE:
            skip(item, f"decision {item.decision}")
            continue
        if item.media != "image":
            skip(item, f"media {item.media}")
            continue
        suffix = SUFFIXES.get((item.image_format or "").upper())
        if suffix is None:
            skip(item, f"format {item.image_format} not read by dfscan train")
            continue
        data = item.read()
        if data is None:
            skip(item, "bytes no longer held")
            continue
        path = out / item.decision / f"{item.job_id}{suffix}"
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        written[item.decision] += 1
        entries.append(
            {
                "job_id": item.job_id,
                "decision": item.decision,
                "path": str(path.relative_to(out)),
                "sha256": item.image_sha256,
                "decided_at": item.decided_at.isoformat(),
            }
        )
    manifest = out / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "tenant": tenant,
                "since": since.isoformat(),
                "written": written,
                "skipped": skipped,
                "jobs": entries,
            },
            indent=1,
        )
        + "\n"
    )
    return ExportReport(written, skipped, manifest)
