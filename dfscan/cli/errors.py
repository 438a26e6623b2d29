"""One error path for every `dfscan` command: one line ``error CODE: message`` on stderr, an exit code.

Every command runs inside :class:`DfscanGroup`, which turns what escapes a command into that line:

- a bad argument (click's usage errors: unknown option, missing argument, a value of the wrong type)
  is ``BAD_ARGUMENT``, exit 2;
- a ``DfscanError`` prints its own code (``UNKNOWN_ID`` and ``NOTHING_TO_ROLL_BACK`` exit 1, the rest
  exit 2: the command could not do what was asked);
- anything else (a bug, a database that cannot be reached) is ``INTERNAL_ERROR``, exit 2; ``-v`` logs
  its traceback.

Credentials in URLs are masked in every line. Exit codes (also in the CLI reference): 0 done; 1 the
command ran and the answer is "no" (sources failed in `scan`, `check` found a lost job, an unknown
id); 2 bad arguments or the command could not run; 3 `submit --wait` timed out; 4 `scan --fail-on
fake` saw a fake verdict.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

import typer
from typer import _click
from typer.core import TyperGroup

from dfscan.exceptions import BadArgumentError, DfscanError, NothingToRollBackError, UnknownIdError
from dfscan.urlguard import mask_url_credentials

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NO = 1  # ran, answer is "no": failed sources, a failed check, an unknown id
EXIT_USAGE = 2  # bad arguments, or the command could not run
EXIT_TIMEOUT = 3  # `submit --wait --timeout` passed
EXIT_FAKE = 4  # `scan --fail-on fake` saw a fake verdict

_EXIT_NO_CODES = (UnknownIdError.code, NothingToRollBackError.code)


def error_line(code: str, message: str) -> str:
    """``error CODE: message`` on one line, URL credentials masked."""
    text = " ".join(str(message).split())
    return f"error {code}: {mask_url_credentials(text)}"


def print_error(code: str, message: str) -> None:
    sys.stderr.write(error_line(code, message) + "\n")
    sys.stderr.flush()


def fail(exc: Exception, exit_code: int | None = None) -> typer.Exit:
    """Print ``exc`` as the one error line; the ``typer.Exit`` to raise (``raise fail(exc) from exc``)."""
    code = exc.code if isinstance(exc, DfscanError) else "INTERNAL_ERROR"
    message = exc.message if isinstance(exc, DfscanError) else f"{type(exc).__name__}: {exc}"
    print_error(code, message)
    return typer.Exit(exit_code if exit_code is not None else exit_code_of(exc))


def exit_code_of(exc: Exception) -> int:
    if isinstance(exc, DfscanError) and exc.code in _EXIT_NO_CODES:
        return EXIT_NO
    return EXIT_USAGE


class DfscanGroup(TyperGroup):
    """The top-level `dfscan` group: every error of every sub-command leaves through :meth:`main`."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click.exceptions.NoArgsIsHelpError as exc:  # `dfscan models`: the help, as before
            exc.show()
            _exit(EXIT_USAGE)
        except _click.exceptions.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "dfscan"
            print_error(BadArgumentError.code, f"{exc.format_message()} (see `{where} --help`)")
            _exit(EXIT_USAGE)
        except _click.exceptions.ClickException as exc:
            print_error(BadArgumentError.code, exc.format_message())
            _exit(exc.exit_code or EXIT_USAGE)
        except typer.Abort:
            print_error("ABORTED", "interrupted")
            _exit(130)
        except DfscanError as exc:
            print_error(exc.code, exc.message)
            _exit(exit_code_of(exc))
        except Exception as exc:
            log.info("traceback of the error below", exc_info=exc)  # shown with -v
            first = (str(exc).strip().splitlines() or [""])[0][:500]
            print_error("INTERNAL_ERROR", f"{type(exc).__name__}: {first} (run with -v for the traceback)")
            _exit(EXIT_USAGE)
        _exit(rv if isinstance(rv, int) else EXIT_OK)


def _exit(code: int) -> NoReturn:
    sys.exit(code)


_RELATIVE = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO 8601 date or time (UTC unless it says otherwise), ``today``, ``yesterday``,
    or a span back from now (``90s``, ``30m``, ``24h``, ``7d``, ``2w``). BAD_ARGUMENT otherwise."""
    now = now or datetime.now(timezone.utc)
    value = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "today":
        return midnight
    if value == "yesterday":
        return midnight - timedelta(days=1)
    match = _RELATIVE.match(value)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadArgumentError(
            f"--since {text!r} is not a date: give an ISO date or time (2026-11-26, 2026-11-26T08:00:00Z), "
            "today, yesterday, or a span such as 24h or 7d"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
