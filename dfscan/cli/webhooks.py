"""`dfscan webhooks ...`: see deliveries, redeliver one, run a delivery loop; `dfscan exporter`."""

from __future__ import annotations

import json
import threading
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dfscan.exceptions import BadArgumentError, UnknownIdError
from dfscan.ids import parse_id
from dfscan.settings import get_settings
from dfscan.urlguard import mask_url_credentials

webhooks_app = typer.Typer(help="Webhook deliveries (the outbox in Postgres).", no_args_is_help=True)
err = Console(stderr=True)


def _sessions():  # type: ignore[no-untyped-def]
    from db.session import new_engine, new_session_factory

    return new_session_factory(new_engine(get_settings().database_url))


@webhooks_app.command("list")
def list_cmd(
    failed: Annotated[
        bool,
        typer.Option("--failed", help="Only given-up deliveries and pending ones that failed an attempt."),
    ] = False,
    submission: Annotated[str | None, typer.Option(help="Only this submission's deliveries.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Deliveries, oldest first: event, state, attempts, last status and error (URL credentials masked)."""
    from db.webhooks import list_deliveries

    sid = parse_id(submission, "submission id") if submission else None
    with _sessions()() as session:
        rows = list_deliveries(session, failed_only=failed, submission_id=sid, limit=limit)
        items = [
            {
                "id": str(row.id),
                "event": row.event,
                "submission_id": str(row.submission_id),
                "job_id": str(row.job_id) if row.job_id else None,
                "url": mask_url_credentials(row.url),
                "state": row.state,
                "attempts": row.attempts,
                "last_status": row.last_status,
                "error_code": row.error_code,
                "error": row.error_message,
                "next_attempt_at": row.next_attempt_at.isoformat(),
                "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
            }
            for row in rows
        ]
    if as_json:
        for item in items:
            print(json.dumps(item))
        return
    table = Table()
    for column in ("id", "event", "state", "attempts", "status", "error"):
        table.add_column(column, overflow="fold")
    for item in items:
        error = f"{item['error_code']}: {item['error']}" if item["error_code"] else ""
        table.add_row(
            str(item["id"]),
            str(item["event"]),
            str(item["state"]),
            str(item["attempts"]),
            str(item["last_status"] or ""),
            error,
        )
    Console(soft_wrap=False).print(table)


@webhooks_app.command("redeliver")
def redeliver_cmd(
    delivery_id: Annotated[
        str | None, typer.Argument(help="Delivery (event) id; or choose many with the options.")
    ] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every given-up delivery (state failed).")] = False,
    since: Annotated[
        str | None, typer.Option(help="Deliveries created since: ISO date/time, today, yesterday, 24h, 7d.")
    ] = None,
    receiver: Annotated[
        str | None,
        typer.Option(
            help="Deliveries whose callback URL starts with this (e.g. https://hooks.example.com/)."
        ),
    ] = None,
    submission: Annotated[str | None, typer.Option(help="Deliveries of this submission.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many deliveries (oldest first).")] = 1000,
) -> None:
    """Send deliveries again now, with a fresh set of attempts (same event id, same body): one by id,
    or every one matching --failed, --since, --receiver and --submission (all given must match)."""
    from db.webhooks import redeliver, redeliver_matching
    from dfscan.cli.errors import parse_since

    bulk = failed or since is not None or receiver is not None or submission is not None
    if delivery_id is not None and bulk:
        raise BadArgumentError(
            "give a delivery id or the options --failed/--since/--receiver/--submission, not both"
        )
    if delivery_id is None and not bulk:
        raise BadArgumentError(
            "give a delivery id, or choose deliveries with --failed, --since, --receiver or --submission"
        )
    if delivery_id is not None:
        one = parse_id(delivery_id, "delivery id")
        with _sessions().begin() as session:
            if not redeliver(session, one):
                raise UnknownIdError(f"no delivery {one}")
        err.print(f"delivery {one} is pending again")
        return
    when = parse_since(since) if since is not None else None
    sid = parse_id(submission, "submission id") if submission else None
    with _sessions().begin() as session:
        ids = redeliver_matching(
            session, failed_only=failed, since=when, receiver=receiver, submission_id=sid, limit=limit
        )
    err.print(
        f"{len(ids)} deliveries are pending again" + (f" (the first {limit})" if len(ids) >= limit else "")
    )
    for delivery in ids:
        print(delivery)


@webhooks_app.command("deliver")
def deliver_cmd(once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False) -> None:
    """Run a delivery loop (the sweeper runs one too; several loops share the work)."""
    from worker.delivery import Deliverer

    deliverer = Deliverer(_sessions(), get_settings())
    if once:
        report = deliverer.deliver_once()
        print(f"delivered={report.delivered} retrying={report.retrying} failed={report.failed}")
        return
    stop = threading.Event()
    try:
        deliverer.run(stop)
    except KeyboardInterrupt:
        stop.set()


def exporter(
    port: Annotated[int | None, typer.Option(help="HTTP port (default 9465).")] = None,
) -> None:
    """Serve queue metrics from Postgres and Redis for Prometheus and autoscalers."""
    from dfscan.exporter import serve_forever

    serve_forever(get_settings(), port=port)
