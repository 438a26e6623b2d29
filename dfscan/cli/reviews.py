"""`dfscan reviews export`: reviewers' decisions as training data (the layout `dfscan train` reads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dfscan.cli.errors import parse_since
from dfscan.settings import get_settings

reviews_app = typer.Typer(help="Reviewers' decisions (the review console).", no_args_is_help=True)
out = Console()


@reviews_app.command("export")
def export_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder to write real/, fake/ and manifest.json into.")],
    tenant: Annotated[str, typer.Option(help="The tenant whose decisions to export.")],
    since: Annotated[
        str, typer.Option(help="Decisions made at or after: an ISO date or time, today, or a span (7d).")
    ] = "30d",
) -> None:
    """Write the reviewed images still held (the tenant's own uploads within retention) whose latest decision is fake or real
    as DIR/fake/<job_id>.<ext> and DIR/real/<job_id>.<ext>, with DIR/manifest.json naming every reviewed job
    and what became of it. Then: `dfscan train --data DIR`."""
    from db import reviews, uploads
    from db.session import new_engine, new_session_factory
    from db.tenants import tenant_by_name
    from dfscan.console.export import Decided, export
    from dfscan.console.media import DirectoryMedia, TenantMedia

    settings = get_settings()
    when = parse_since(since)
    root = getattr(settings, "upload_store", None)
    folder = DirectoryMedia(root) if root else None
    engine = new_engine(settings.database_url)
    try:
        with new_session_factory(engine)() as session:
            tenant_row = tenant_by_name(session, tenant)
            rows = reviews.decided(session, tenant_row.id, since=when)
            held = uploads.held_by(session, tenant_row.id, [row.image_sha256 for row in rows])
    finally:
        engine.dispose()
    store = TenantMedia(folder, held) if folder is not None else None

    def reader(sha256: str) -> Callable[[], bytes | None]:
        return (lambda: store.read(sha256)) if store is not None else (lambda: None)

    items = [
        Decided(
            job_id=str(row.job_id),
            decision=row.decision,
            media=row.media,
            image_format=row.image_format,
            image_sha256=row.image_sha256,
            decided_at=row.decided_at,
            read=reader(row.image_sha256),
        )
        for row in reversed(rows)  # oldest first: the manifest reads as the decisions were made
    ]
    report = export(items, directory, tenant=tenant, since=when)
    out.print(
        f"wrote {report.written['fake']} fake and {report.written['real']} real images to {directory}"
        + (f"; skipped {sum(report.skipped.values())} ({report.skipped})" if report.skipped else "")
    )
    out.print(f"manifest: {report.manifest}")
