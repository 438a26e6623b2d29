"""Print results as a table, JSON lines or CSV. Shared by `scan`, `submit --wait` and `results`.

Every row is a plain dict with at least: source, status, label, fake_score, model_version,
error_code, error (and job_id for the service commands). JSON output is one object per line.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from rich.console import Console
from rich.table import Table

KEYS = (
    "source",
    "status",
    "label",
    "fake_score",
    "threshold",
    "judged_on",
    "n_faces",
    "declared_ai",
    "faces_found",
    "faces_judged",
    "faces_skipped",
    "model_version",
    "error_code",
    "error",
)


def n_faces(row: Mapping[str, Any]) -> int | None:
    """How many faces a done row was judged on (0 when judged on the whole image); for a video, the
    faces of all its sampled frames together."""
    if row.get("status") != "done":
        return None
    if row.get("frames"):
        return sum(len(frame.get("faces") or ()) for frame in row["frames"])
    return len(row.get("faces") or ())


def declared(row: Mapping[str, Any]) -> str:
    """A done row's provenance in a few words: what it declares and whether its signature holds
    ("AI (c2pa, signed)", "AI (c2pa, INVALID signature)", "capture (xmp)", "c2pa", "-")."""
    found = row.get("provenance") or {}
    if not found:
        return "-"
    by = found.get("declared_by")
    ai = found.get("declared_ai")
    what = "AI" if ai is True else "capture" if ai is False else ""
    if found.get("manifest"):
        valid = found.get("signature_valid")
        check = "signed" if valid is True else "INVALID signature" if valid is False else "unread"
        where = f"c2pa, {check}" if by in (None, "c2pa") else f"{by}; c2pa, {check}"
    else:
        where = by or ""
    if not what and not where:
        return "-"
    return f"{what} ({where})" if what else where


def skipped_text(skipped: Mapping[str, int] | None) -> str:
    """``too_small 3, over_cap 1``: the faces not judged, by reason ('' when none)."""
    return ", ".join(f"{reason} {count}" for reason, count in (skipped or {}).items())


def faces_cell(row: Mapping[str, Any]) -> str:
    """The console's faces column: judged of found, and why the others were skipped ('-': faces off)."""
    found = row.get("faces_found")
    if found is None:
        return str(n_faces(row)) if row.get("judged_on") == "faces" else "-"
    text = f"{row.get('faces_judged')}/{found}"
    skipped = skipped_text(row.get("faces_skipped"))
    return f"{text} (skipped: {skipped})" if skipped else text


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def emit_json(row: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(dict(row), default=str) + "\n")
    sys.stdout.flush()


def print_rows(rows: list[dict[str, Any]], fmt: Format, *, extra_keys: tuple[str, ...] = ()) -> None:
    keys = (*extra_keys, *KEYS)
    if fmt is Format.json:
        for row in rows:
            emit_json(row)
    elif fmt is Format.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(keys), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(
            {
                **row,
                "n_faces": n_faces(row),
                "declared_ai": (row.get("provenance") or {}).get("declared_ai"),
                "faces_skipped": skipped_text(row.get("faces_skipped")),
            }
            for row in rows
        )
    else:
        print_table(rows)


def print_table(rows: Iterable[Mapping[str, Any]]) -> None:
    table = Table(show_lines=False)
    for name, justify in (
        ("source", "left"),
        ("label", "left"),
        ("p(fake)", "right"),
        ("threshold", "right"),
        ("faces", "right"),
        ("declared", "left"),
        ("model or error", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        if row["status"] == "done":
            colour = {"fake": "red", "real": "green"}.get(str(row["label"]), "dim")
            score = row.get("fake_score")
            threshold = row.get("threshold")
            label = f"[{colour}]{row['label']}[/{colour}]"
            if row.get("media") == "video" and row.get("peak_t") is not None:
                label += f" video {row.get('duration_s') or 0:.1f} s, peak at {row['peak_t']:.1f} s"
            second = row.get("second_opinion")
            if second:  # the combined reading with a second model: real, fake or inconclusive
                label += f" (with 2nd model: {second.get('combined_label')})"
            table.add_row(
                str(row["source"]),
                label,
                "" if score is None else f"{score:.4f}",
                "" if threshold is None else f"{threshold:.4f}",
                faces_cell(row),
                declared(row),
                str(row["model_version"]),
            )
        elif row["status"] == "failed":
            table.add_row(
                str(row["source"]), f"[yellow]{row['error_code']}[/yellow]", "", "", "", "", str(row["error"])
            )
        else:
            table.add_row(str(row["source"]), str(row["status"]), "", "", "", "", "")
    # Piped or redirected output is read by programs and people alike: do not fold it at 80 columns.
    width = None if sys.stdout.isatty() else 240
    Console(soft_wrap=False, width=width).print(table)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(rows: Iterable[Mapping[str, Any]]) -> str:
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for row in rows:
        counts["total"] += 1
        counts["videos"] += row.get("media") == "video"
        counts[str(row["status"])] += 1
        if row["status"] == "done":
            counts[str(row["label"])] += 1
        elif row.get("error_code"):
            codes[str(row["error_code"])] += 1
    images = counts["total"] - counts["videos"]
    sources = _count(images, "image") + (f", {_count(counts['videos'], 'video')}" if counts["videos"] else "")
    parts = [sources, f"{counts['fake']} fake", f"{counts['real']} real"]
    if counts["not_applicable"]:
        parts.append(f"{counts['not_applicable']} without a face (not_applicable)")
    parts.append(f"{counts['failed']} failed")
    if codes:
        parts[-1] += " (" + ", ".join(f"{code} {n}" for code, n in codes.most_common()) + ")"
    pending = counts["total"] - counts["done"] - counts["failed"]
    if pending:
        parts.append(f"{pending} pending")
    return ", ".join(parts)
