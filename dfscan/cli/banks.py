"""`dfscan banks ...`: hash banks, lists of PDQ hashes every source is matched against
(docs/near-duplicates.md)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dfscan.exceptions import BadArgumentError
from dfscan.ids import parse_id
from dfscan.settings import get_settings

banks_app = typer.Typer(
    help="Hash banks: PDQ hashes of known media to match every source against.", no_args_is_help=True
)
err = Console(stderr=True)

# Column names the ThreatExchange / HMA CSV exports use for the hash, its type and its id.
_HASH_COLUMNS = ("signal_value", "signal", "hash", "pdq", "indicator")
_TYPE_COLUMNS = ("signal_type", "indicator_type", "type")
_ID_COLUMNS = ("id", "signal_id", "content_id", "indicator_id", "threat_descriptor_id")


def _sessions():  # type: ignore[no-untyped-def]
    from db.session import new_engine, new_session_factory

    return new_session_factory(new_engine(get_settings().database_url))


def _tenant(session, name: str | None):  # type: ignore[no-untyped-def]
    """The tenant id of ``--tenant NAME`` (the default tenant when not given)."""
    from dfscan.tenants import DEFAULT_TENANT_ID, DEFAULT_TENANT_NAME

    if name is None or name == DEFAULT_TENANT_NAME:
        return DEFAULT_TENANT_ID
    from db.tenants import tenant_by_name

    tenant = tenant_by_name(session, name)
    if tenant is None:
        from dfscan.exceptions import UnknownIdError

        raise UnknownIdError(f"no tenant {name!r}")
    return tenant.id


TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="The tenant that owns the bank (default: default).")
]


@banks_app.command("create")
def create_cmd(
    name: Annotated[str, typer.Argument(help="The bank's name (unique within its tenant).")],
    shared: Annotated[
        bool, typer.Option("--shared", help="Match it for every tenant, not only its own.")
    ] = False,
    force_label: Annotated[
        str | None,
        typer.Option("--force-label", help="fake or real: the label of every source that matches it."),
    ] = None,
    tenant: TenantOption = None,
) -> None:
    """Create an empty bank."""
    from db import hashes

    with _sessions().begin() as session:
        bank = hashes.create_bank(
            session, name, tenant_id=_tenant(session, tenant), shared=shared, force_label=force_label
        )
        typer.echo(f"created bank {bank.name}" + (" (shared)" if shared else ""))


def parse_bank_file(text: str) -> Iterator[tuple[bytes, str | None]]:
    """(pdq, id) pairs from a bank file: one hash per line with an optional id after it (space, tab or
    comma), ``#`` comments; or a CSV with a header naming the hash column (ThreatExchange / HMA exports:
    ``signal_value``/``signal``/``hash``, ``signal_type`` and an id column). BAD_ARGUMENT names the line of
    the first hash that is not 64 hex digits; CSV rows of another signal type are refused the same way."""
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    header = [cell.strip().lower() for cell in first.split(",")]
    if any(name in header for name in _HASH_COLUMNS):
        reader = csv.DictReader(io.StringIO(text))
        columns = {k.strip().lower(): k for k in reader.fieldnames or ()}
        hash_col = columns[next(n for n in _HASH_COLUMNS if n in columns)]
        type_col = next((columns[n] for n in _TYPE_COLUMNS if n in columns), None)
        id_col = next((columns[n] for n in _ID_COLUMNS if n in columns), None)
        for number, row in enumerate(reader, start=2):
            kind = (row.get(type_col) or "pdq").strip().lower() if type_col else "pdq"
            if kind not in ("pdq", "hash_pdq", "pdqhash"):
                raise BadArgumentError(f"line {number}: signal type {kind!r} is not PDQ")
            yield (
                _hex(row.get(hash_col) or "", number),
                ((row.get(id_col) or "").strip() or None) if id_col else None,
            )
        return
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").replace("\t", " ").split(None, 1)
        yield _hex(parts[0], number), parts[1].strip() if len(parts) > 1 else None


def _hex(text: str, number: int) -> bytes:
    """A PDQ hash as ThreatExchange writes it (64 hex digits) to its 32 bytes."""
    digits = text.strip().lower()
    try:
        if len(digits) != 64:
            raise ValueError(digits)
        return bytes.fromhex(digits)
    except ValueError as exc:
        raise BadArgumentError(f"line {number}: {digits[:80]!r} is not a PDQ hash (64 hex digits)") from exc


@banks_app.command("import")
def import_cmd(
    name: Annotated[str, typer.Argument(help="The bank.")],
    file: Annotated[
        Path,
        typer.Argument(
            help="Hashes: one a line with an optional id, or a ThreatExchange/HMA CSV ('-': stdin)."
        ),
    ],
    tenant: TenantOption = None,
) -> None:
    """Add the hashes of FILE to a bank (all or none: a bad line stops the import)."""
    from db import hashes

    text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    entries = list(parse_bank_file(text))
    with _sessions().begin() as session:
        bank = hashes.get_bank(session, name, tenant_id=_tenant(session, tenant))
        added = hashes.add_entries(session, bank, [(pdq, ext, None) for pdq, ext in entries])
    typer.echo(f"imported {added} hashes into {name}")


@banks_app.command("add")
def add_cmd(
    name: Annotated[str, typer.Argument(help="The bank.")],
    from_job: Annotated[str, typer.Option("--from-job", help="A job whose verdict's hashes to add.")],
    tenant: TenantOption = None,
) -> None:
    """Add a judged job's hashes (an image's PDQ, or every sampled frame of a video) to a bank; their id
    in the bank is the job id."""
    from db import hashes

    job_id = parse_id(from_job, "job id")
    with _sessions().begin() as session:
        tenant_id = _tenant(session, tenant)
        bank = hashes.get_bank(session, name, tenant_id=tenant_id)
        found = hashes.job_hashes_for_bank(session, job_id, tenant_id)
        added = hashes.add_entries(session, bank, [(pdq, str(job_id), quality) for pdq, quality in found])
    typer.echo(f"added {added} hashes of job {job_id} to {name}")


@banks_app.command("export")
def export_cmd(
    name: Annotated[str, typer.Argument(help="The bank.")],
    as_csv: Annotated[
        bool, typer.Option("--csv", help="ThreatExchange/HMA CSV (signal_type,signal_value,id).")
    ] = False,
    tenant: TenantOption = None,
) -> None:
    """Print a bank's hashes, one a line with its id (the form `dfscan banks import` reads)."""
    from db import hashes

    with _sessions()() as session:
        bank = hashes.get_bank(session, name, tenant_id=_tenant(session, tenant))
        entries = hashes.bank_entries(session, bank)
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["signal_type", "signal_value", "id"])
        for entry in entries:
            writer.writerow(["pdq", bytes(entry.pdq).hex(), entry.external_id or entry.id])
        return
    for entry in entries:
        typer.echo(f"{bytes(entry.pdq).hex()} {entry.external_id or entry.id}")


@banks_app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    tenant: TenantOption = None,
) -> None:
    """The tenant's banks and the shared ones: entries, shared, enabled, forced label."""
    from db import hashes

    with _sessions()() as session:
        rows = hashes.list_banks(session, _tenant(session, tenant))
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row))
        else:
            flags = [f for f, on in (("shared", row["shared"]), ("disabled", not row["enabled"])) if on]
            forced = f" force={row['force_label']}" if row["force_label"] else ""
            typer.echo(
                f"{row['name']}\t{row['entries']} entries{forced}{' ' + ','.join(flags) if flags else ''}"
            )
