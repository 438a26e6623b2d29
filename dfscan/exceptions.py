"""Every error dfscan stores on a job, with its stable code.

Codes are SCREAMING_SNAKE strings that backends branch on; they never change meaning. The README
has the table. Errors are split by what a worker should do with them:

- ``permanent``: the input itself is bad (blocked address, corrupt image). The job fails at once.
- transient (``permanent = False``): the world may heal (timeout, HTTP 5xx, database down). The job
  is retried with backoff and fails with its code only when attempts run out.

This module imports nothing beyond the standard library, so the inference core, the producer and
the database layer can all share it.
"""

from __future__ import annotations


class DfscanError(Exception):
    """An unexpected bug; the message says what happened. (Base class of every dfscan error.)"""

    code: str = "INTERNAL_ERROR"
    permanent: bool = True

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


# --- sources: URLs and paths -------------------------------------------------------------------


class BlockedDestinationError(DfscanError):
    """A URL resolved to an address dfscan refuses to contact (loopback, private, ...)."""

    code = "BLOCKED_DESTINATION"


class UnsupportedSourceError(DfscanError):
    """Neither an http(s) URL nor a path (e.g. ``file://``, ``gopher://``, an empty string)."""

    code = "UNSUPPORTED_SOURCE"


class PathNotAllowedError(DfscanError):
    """A path outside the allowed roots, a symlink leading out, or a non-regular file."""

    code = "PATH_NOT_ALLOWED"


class SourceNotFoundError(DfscanError):
    """A path that does not exist, or a host name that does not resolve."""

    code = "NOT_FOUND"


class FetchTimeoutError(DfscanError):
    """Connect, read or total deadline exceeded."""

    code = "FETCH_TIMEOUT"
    permanent = False


class FetchError(DfscanError):
    """The connection failed (refused, reset, TLS failure)."""

    code = "FETCH_FAILED"
    permanent = False


class TooLargeError(DfscanError):
    """The body (or file) is larger than the byte cap."""

    code = "TOO_LARGE"


class TooManyRedirectsError(DfscanError):
    """More redirect hops than allowed."""

    code = "TOO_MANY_REDIRECTS"


class HttpStatusError(DfscanError):
    """A non-2xx answer. 5xx and 429 are transient, other statuses are permanent."""

    code = "HTTP_STATUS"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = not (status >= 500 or status == 429)


# --- images ----------------------------------------------------------------------------------


class UnsupportedFormatError(DfscanError):
    """Bytes that are not an image in one of the allowed formats."""

    code = "UNSUPPORTED_FORMAT"


class CorruptImageError(DfscanError):
    """An allowed format whose data is truncated, empty or broken."""

    code = "CORRUPT_IMAGE"


class ImageTooLargeError(DfscanError):
    """Too many pixels (decompression bomb), frames, pages or tile pixels, or over the decode memory limit."""

    code = "IMAGE_TOO_LARGE"


class ImageTooComplexError(DfscanError):
    """Structure no real image has and whose parsing cost grows with it (scans, chunks, tags), or over the decode deadline."""

    code = "IMAGE_TOO_COMPLEX"


# --- videos ----------------------------------------------------------------------------------


class CorruptVideoError(DfscanError):
    """An allowed video container whose data is truncated or broken, or whose sampled frames do not decode."""

    code = "CORRUPT_VIDEO"


class VideoTooLongError(DfscanError):
    """A video longer than DFSCAN_MAX_VIDEO_SECONDS, by its header or by its timestamps."""

    code = "VIDEO_TOO_LONG"


class VideoTooLargeError(DfscanError):
    """Frames over the pixel cap, too many streams, or more decoding than the per-job deadline allows."""

    code = "VIDEO_TOO_LARGE"


# --- models ----------------------------------------------------------------------------------


class ModelLoadError(DfscanError):
    """A checkpoint that cannot be loaded (unreachable hub, missing files, bad config)."""

    code = "MODEL_LOAD_FAILED"


class LabelMappingError(ModelLoadError):
    """A checkpoint whose label names cannot be mapped to real/fake."""

    code = "LABEL_MAPPING"


class InferenceError(DfscanError):
    """A model or device fault while predicting a batch. Jobs go back to the queue."""

    code = "INFERENCE_FAILED"
    permanent = False


# --- the system ------------------------------------------------------------------------------


class BadMessageError(DfscanError):
    """A task message whose arguments do not fit the message contract."""

    code = "BAD_MESSAGE"


class MaxAttemptsError(DfscanError):
    """A job that was tried (or recovered by the sweeper) too many times."""

    code = "MAX_ATTEMPTS"


class QueueFullError(DfscanError):
    """Backpressure: the queue is deeper than the configured limit."""

    code = "QUEUE_FULL"
    permanent = False


class TrainingDataError(DfscanError):
    """Training or evaluation data that cannot be used (empty class, unknown labels, ...)."""

    code = "BAD_TRAINING_DATA"


class TrainingFailedError(DfscanError):
    """A training run that crashed (the message says how); its checkpoints are kept."""

    code = "TRAINING_FAILED"


class CallbackUrlTooLongError(DfscanError):
    """A callback URL longer than 2,048 characters (it is copied into every event row)."""

    code = "CALLBACK_URL_TOO_LONG"


class IdempotencyConflictError(DfscanError, ValueError):
    """An idempotency key reused with other sources or another callback URL or events."""

    code = "IDEMPOTENCY_CONFLICT"


class BadArgumentError(DfscanError, ValueError):
    """An argument that cannot be used (CLI or ScanClient): a malformed id or date, an unknown value."""

    code = "BAD_ARGUMENT"


class UnknownIdError(DfscanError, LookupError):
    """A well-formed id (submission, delivery, training run, model version) that names nothing stored."""

    code = "UNKNOWN_ID"


class NothingToRollBackError(DfscanError, LookupError):
    """`dfscan models rollback` with nothing promoted: the default model (DFSCAN_MODEL) already serves."""

    code = "NOTHING_TO_ROLL_BACK"


class WaitTimeoutError(DfscanError, TimeoutError):
    """`submit --wait --timeout` (Submission.wait) gave up before every job was final; the jobs go on."""

    code = "WAIT_TIMEOUT"
    permanent = False


class ConfigError(DfscanError):
    """A setting that is missing or wrong for the command (e.g. Flower without a password)."""

    code = "CONFIG_ERROR"


def error_codes() -> dict[str, str]:
    """Every stable code with the first line of its docstring (used by the README and tests)."""
    out: dict[str, str] = {}
    stack: list[type[DfscanError]] = [DfscanError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        doc = (cls.__doc__ or "").strip().splitlines()
        out.setdefault(cls.code, doc[0] if doc else "")
    return dict(sorted(out.items()))
