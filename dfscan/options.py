"""Per-job options: what one submission asks of the judge beyond the worker's settings.

Every intake (``POST /v1/scans``, ``ScanClient.submit``, ``dfscan submit``, a foreign Celery message with
``sources``) checks them with :func:`parse_options`; the job row stores them (``scan_jobs.options``, only
what differs from the worker's settings); the worker reads them back with its claim and judges the job
under them (:meth:`worker.inference.judge.Judge.for_options`). A worker restarted with other settings
still honours what each queued job asked for.

- ``explain``: true adds a heatmap per judged region (the result's ``explanation``), false leaves it out;
  absent: the worker's ``DFSCAN_EXPLAIN``. Costs one forward and backward pass per region, paid only by
  the jobs that ask.
- ``faces``: ``auto``, ``require`` or ``off`` for this job; absent: the worker's ``DFSCAN_FACES`` (or the
  faces road a promoted version was trained on). The verdict's ``model_version`` names the faces road it
  was judged on, so the duplicate cache never answers one mode with another's score.

A value dfscan does not know is ``BAD_OPTION`` (422 over HTTP, exit 2 in the CLI, a failed job for a
foreign message). Pure: the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dfscan.exceptions import BadOptionError

FACES_MODES = ("auto", "require", "off")
OPTION_NAMES = ("explain", "faces")


@dataclass(frozen=True)
class JobOptions:
    """One job's options; None everywhere means "the worker's settings"."""

    explain: bool | None = None
    faces: str | None = None

    def stored(self) -> dict[str, Any] | None:
        """What the job row keeps: the options that were given, or None when none was."""
        out = {name: getattr(self, name) for name in OPTION_NAMES if getattr(self, name) is not None}
        return out or None

    @property
    def default(self) -> bool:
        return self.stored() is None


DEFAULT_OPTIONS = JobOptions()


def parse_options(explain: object = None, faces: object = None) -> JobOptions:
    """Check the options one intake received; BadOptionError (``BAD_OPTION``) naming the bad one."""
    if explain is not None and not isinstance(explain, bool):
        raise BadOptionError(f"explain must be true or false, not {_shown(explain)}")
    if faces is not None and (not isinstance(faces, str) or faces not in FACES_MODES):
        raise BadOptionError(f"faces must be one of {', '.join(FACES_MODES)}, not {_shown(faces)}")
    return JobOptions(explain=explain, faces=faces)


def options_of(stored: Mapping[str, Any] | None) -> JobOptions:
    """The options a job row (or a message) holds, checked again: a row is written by every intake,
    and a hand-edited one must not reach the judge unchecked."""
    if not stored:
        return DEFAULT_OPTIONS
    if not isinstance(stored, Mapping):
        raise BadOptionError(f"options must be an object, not {_shown(stored)}")
    unknown = sorted(set(stored) - set(OPTION_NAMES))
    if unknown:
        raise BadOptionError(f"unknown options {unknown}; known: {', '.join(OPTION_NAMES)}")
    return parse_options(stored.get("explain"), stored.get("faces"))


def _shown(value: object) -> str:
    return ascii(value)[:80]
