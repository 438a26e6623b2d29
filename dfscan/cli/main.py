"""The `dfscan` command line. Thin: every command calls the producer, the database layer or the core."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dfscan.cli.banks import banks_app
from dfscan.cli.errors import EXIT_FAKE, EXIT_NO, EXIT_TIMEOUT, DfscanGroup, fail, parse_since, print_error
from dfscan.cli.output import Format, emit_json, print_rows, summary
from dfscan.cli.reviews import reviews_app
from dfscan.cli.tenants import keys_app, tenants_app
from dfscan.cli.training import evaluate, models_app, train_app
from dfscan.cli.webhooks import exporter, webhooks_app
from dfscan.exceptions import BadArgumentError, DfscanError, SourceNotFoundError
from dfscan.ids import parse_id
from dfscan.options import parse_options
from dfscan.settings import get_settings

app = typer.Typer(
    cls=DfscanGroup,  # one error path: `error CODE: message` on one line, never a traceback
    help="Scan images for deepfakes: in-process (`scan`) or through Redis, Celery and Postgres.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
app.command("evaluate")(evaluate)
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(banks_app, name="banks")
app.command("exporter")(exporter)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.add_typer(reviews_app, name="reviews")
err = Console(stderr=True)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # huggingface_hub prints its warnings (hub retries) with a handler of its own and also passes
    # them to the root logger: keep its own line, once.
    logging.getLogger("huggingface_hub").propagate = False


class FailOn(str, Enum):
    fake = "fake"


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False):
    _setup_logging(verbose)


@app.command()
def scan(
    targets: Annotated[list[str], typer.Argument(help="Image files, folders or http(s) URLs.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Hub id or local directory (default DFSCAN_MODEL).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table, json (one object per line) or csv.")] = (
        Format.table
    ),
    faces: Annotated[
        str | None,
        typer.Option(
            help="auto, require or off: judge the faces (default DFSCAN_FACES; see docs/faces-and-video.md)."
        ),
    ] = None,
    annotate: Annotated[
        Path | None,
        typer.Option(
            help="Write a copy of each judged image here, its face boxes drawn with p(fake); for a video, a contact sheet of its sampled frames."
        ),
    ] = None,
    fail_on: Annotated[
        FailOn | None,
        typer.Option("--fail-on", help="fake: exit 4 when any verdict is fake (for pipelines)."),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Add a heatmap per judged region (in the JSON's explanation; drawn by --annotate). "
            "Costs one more forward and backward pass per region (DFSCAN_EXPLAIN).",
        ),
    ] = False,
    near_duplicates: Annotated[
        bool,
        typer.Option(
            "--near-duplicates/--no-near-duplicates",
            help="Look each source up among the stored verdicts and the hash banks first: a near-duplicate "
            "is answered from its earlier verdict, bank matches are reported (see docs/near-duplicates.md). "
            "Off: every source is judged.",
        ),
    ] = True,
) -> None:
    """Scan images in this process (no servers) and store every result (SQLite by default).

    Exit status: 0 every source judged; 1 some source failed (its row says why); 2 bad arguments or
    the scan could not run (e.g. the model did not load); 4 with --fail-on fake, some verdict is fake
    (4 wins over 1)."""
    from dfscan.cli.local_scan import collect_sources, run_local_scan

    settings = get_settings()
    if faces is not None:
        if faces not in ("auto", "require", "off"):
            raise typer.BadParameter(f"--faces must be auto, require or off, not {faces!r}")
        settings = settings.model_copy(update={"faces": faces})
    if explain:
        settings = settings.model_copy(update={"explain": True})
    sources, roots = collect_sources(targets, recursive=recursive)
    if not sources:
        print_error(SourceNotFoundError.code, "nothing to scan: no files found in " + ", ".join(targets))
        raise typer.Exit(EXIT_NO)
    rows = []
    try:
        stream = run_local_scan(
            sources,
            roots,
            settings,
            model=model,
            batch_size=batch_size or settings.batch_size,
            annotate=annotate,
            near=near_duplicates,
        )
        show_bar = fmt is not Format.json and len(sources) > 8 and err.is_terminal
        with _progress(len(sources), show_bar) as advance:
            for row in stream:
                rows.append(row)
                if fmt is Format.json:
                    emit_json(row)
                advance()
    except DfscanError as exc:
        raise fail(exc) from exc
    if fmt is not Format.json:
        print_rows(rows, fmt)
    err.print(summary(rows) + f"; results stored in {_redact(settings.database_url)}")
    if fail_on is FailOn.fake and any(row.get("label") == "fake" for row in rows):
        raise typer.Exit(EXIT_FAKE)
    if any(row.get("status") == "failed" for row in rows):
        raise typer.Exit(EXIT_NO)


@app.command()
def submit(
    targets: Annotated[
        list[str], typer.Argument(help="URLs, paths, folders, @FILE of sources, or - for stdin.")
    ],
    recursive: Annotated[bool, typer.Option("--recursive", "-r")] = False,
    client_ref: Annotated[str | None, typer.Option(help="Your reference, stored on each job.")] = None,
    priority: Annotated[int, typer.Option(min=0, max=9, help=">= 5 uses the interactive lane.")] = 0,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Same key, same submission: safe retries.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for every job, with a progress bar.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to --wait before giving up.")] = None,
    wait_for_capacity: Annotated[
        float | None, typer.Option(help="When the queue is full, wait up to this many seconds.")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format")] = Format.table,
    callback_url: Annotated[
        str | None, typer.Option(help="POST signed webhook events here (see docs/webhooks.md).")
    ] = None,
    callback_events: Annotated[
        str | None, typer.Option(help="Comma-separated: job.completed, submission.completed (default both).")
    ] = None,
    faces: Annotated[
        str | None,
        typer.Option(help="auto, require or off for these jobs (default: the worker's DFSCAN_FACES)."),
    ] = None,
    explain: Annotated[
        bool | None,
        typer.Option(
            "--explain/--no-explain",
            help="A heatmap per judged region for these jobs, or none (default: the worker's DFSCAN_EXPLAIN).",
        ),
    ] = None,
) -> None:
    """Queue images for the workers (rows in Postgres first, then one message each)."""
    from producer.client import ScanClient
    from producer.sources import expand_targets

    parse_options(explain, faces)  # BAD_OPTION before any source is read or any row written
    try:
        sources = expand_targets(targets, recursive=recursive)
    except (ValueError, OSError) as exc:
        raise BadArgumentError(str(exc)) from None
    if not sources:
        raise BadArgumentError("no sources found in " + ", ".join(targets))
    try:
        client = ScanClient(get_settings())
        sub = client.submit(
            sources,
            client_ref=client_ref,
            priority=priority,
            idempotency_key=idempotency_key,
            wait_for_capacity=wait_for_capacity,
            callback_url=callback_url,
            callback_events=callback_events.split(",") if callback_events else None,
            explain=explain,
            faces=faces,
        )
    except DfscanError as exc:
        raise fail(exc) from exc
    err.print(
        f"submission {sub.id}: {len(sub.job_ids)} jobs" + ("" if sub.created else " (already submitted)")
    )
    if not wait:
        if fmt is Format.json:
            emit_json({"submission_id": str(sub.id), "jobs": len(sub.job_ids), "created": sub.created})
        else:
            print(sub.id)
        return
    with _progress(len(sub.job_ids), err.is_terminal) as advance:
        done = 0

        def on_progress(counts: dict[str, int]) -> None:
            nonlocal done
            finished = counts["done"] + counts["failed"]
            for _ in range(finished - done):
                advance()
            done = finished

        try:
            sub.wait(timeout, on_progress=on_progress)
        except TimeoutError as exc:
            raise fail(exc, EXIT_TIMEOUT) from exc
    rows = [row.output() for row in sub.results()]
    print_rows(rows, fmt, extra_keys=("job_id",))
    err.print(summary(rows))


@app.command()
def status(submission: Annotated[str, typer.Argument(help="Submission id.")]) -> None:
    """Counts of a submission's jobs by state. Exit 1 (UNKNOWN_ID) for an id that names nothing."""
    from producer.client import ScanClient

    sid = parse_id(submission, "submission id")
    counts = ScanClient(get_settings()).submission(sid).status()
    print(" ".join(f"{key}={value}" for key, value in counts.items()))


@app.command()
def results(
    submission: Annotated[str | None, typer.Argument(help="Submission id (default: all).")] = None,
    label: Annotated[str | None, typer.Option(help="Only 'fake' or 'real' verdicts.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Finished since: ISO date/time (2026-11-26T00:00:00Z), today, yesterday, 24h, 7d."),
    ] = None,
    client_ref: Annotated[
        str | None, typer.Option(help="Only jobs submitted with this --client-ref.")
    ] = None,
    code: Annotated[str | None, typer.Option(help="Only jobs failed with this error code.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Rows per page.")] = 100,
    cursor: Annotated[
        str | None, typer.Option(help="Continue after this job id (printed on stderr when more rows exist).")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Stored results, newest first (a submission's jobs in source order), one page at a time."""
    from producer.client import ScanClient

    if label not in (None, "fake", "real"):
        raise BadArgumentError(f"--label must be fake or real, not {label!r}")
    sid = parse_id(submission, "submission id") if submission else None
    after = parse_id(cursor, "cursor (a job id)") if cursor else None
    when = parse_since(since) if since else None
    page = ScanClient(get_settings()).page(
        submission_id=sid,
        label=label,
        since=when,
        client_ref=client_ref,
        error_code=code.strip().upper() if code else None,
        limit=limit,
        cursor=after,
    )
    print_rows([row.output() for row in page.rows], fmt, extra_keys=("job_id",))
    if page.next_cursor is not None:
        err.print(f"more results: add --cursor {page.next_cursor}", soft_wrap=True)


@app.command()
def check(
    submission: Annotated[str, typer.Argument(help="Submission id.")],
    deadline: Annotated[float, typer.Option(min=0, help="Seconds to wait for every job to be final.")] = 0.0,
) -> None:
    """Invariant check: every job has exactly one outcome. Exits 1 on any loss or duplicate."""
    from producer.check import check_submission

    report = check_submission(get_settings(), parse_id(submission, "submission id"), deadline=deadline)
    print(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="inference, training, or both (comma-separated).")
    ] = "inference",
    concurrency: Annotated[int | None, typer.Option(help="Task threads (default 2 x batch size).")] = None,
    sweeper: Annotated[bool, typer.Option("--sweeper", help="Also run the sweeper in this process.")] = False,
    name: Annotated[
        str | None,
        typer.Option(
            help="Celery node name (default dfscan-QUEUES@HOST-PID, e.g. dfscan-inference@web1-4242)."
        ),
    ] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a Celery worker: inference (threads pool, one batched model) or training."""
    from dfscan.cli.service import run_worker

    run_worker(
        get_settings(), queues=queues, concurrency=concurrency, sweeper=sweeper, name=name, loglevel=loglevel
    )


@app.command("sweeper")
def sweeper_cmd(once: Annotated[bool, typer.Option("--once", help="Sweep once and exit.")] = False) -> None:
    """Re-send jobs whose message or worker was lost (Postgres is the truth)."""
    from dfscan.cli.service import run_sweeper_process

    run_sweeper_process(get_settings(), once=once)


@app.command()
def flower(
    port: Annotated[int | None, typer.Option(help="HTTP port (default 5555).")] = None,
    address: Annotated[
        str | None, typer.Option(help="Listen address (default DFSCAN_FLOWER_ADDRESS, 127.0.0.1).")
    ] = None,
) -> None:
    """Start Flower against the broker, with basic auth from DFSCAN_FLOWER_USER/PASSWORD on every path."""
    from dfscan.cli.service import run_flower

    try:
        run_flower(get_settings(), port=port, address=address)
    except DfscanError as exc:
        raise fail(exc) from exc


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Listen address (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
) -> None:
    """Serve the HTTP API (FastAPI on uvicorn): tenants, API keys, uploads; see docs/api.md."""
    from dfscan.api.app import run

    run(get_settings(), host=host, port=port)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations to DFSCAN_DATABASE_URL."""
    from db.migrate import current, upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    err.print(f"{_redact(url)} is at revision {current(url)}")


@app.command()
def config(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="docs/settings.md: defaults and meanings.")
    ] = False,
) -> None:
    """Show every DFSCAN_* setting with its value (or, --markdown, its default and meaning)."""
    from dfscan.settings import CURRENT

    if markdown:
        from dfscan.docs_reference import settings_page

        print(settings_page(), end="")
        return
    settings = get_settings()
    for name in CURRENT:
        print(f"DFSCAN_{name.upper()}={_shown(name, getattr(settings, name))}")


def _shown(name: str, value: object) -> object:
    """A setting's value as `dfscan config` prints it: secrets masked, passwords cut out of URLs."""
    if hasattr(value, "get_secret_value"):
        return "**********" if value.get_secret_value() else ""  # type: ignore[attr-defined]
    if name.endswith("_url") and isinstance(value, str):
        return _redact(value)
    return value


def _redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (any scheme: SQLAlchemy, redis://, amqp://)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL hidden>"
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr when enabled, else a no-op; yields an advance() callable."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("scanning", total=total)
    with bar:
        yield lambda: bar.advance(task)


if __name__ == "__main__":
    app()
