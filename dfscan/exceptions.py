"""Every error dfscan stores on a job, with its stable code.

Codes are SCREAMING_SNAKE strings that backends branch on; they never change meaning. docs/errors.md
is generated from this module (``python -m dfscan.docs_reference``). Errors are split by what a worker
should do with them:

- ``permanent``: the input itself is bad (blocked address, corrupt image). The job fails at once.
- transient (``permanent = False``): the world may heal (timeout, HTTP 5xx, database down). The job
  is retried with backoff and fails with its code only when attempts run out.

This module imports nothing beyond the standard library, so the inference core, the producer and
the database layer can all share it.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class DfscanError(Exception):
    """An unexpected bug; the message says what happened. (Base class of every dfscan error.)"""

    code: str = "INTERNAL_ERROR"
    permanent: bool = True
    media: str | None = None  # a failed read: what its first bytes showed ("video", "image"), else None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """What is stored on the job beside the code."""
        return str(self.args[0]) if self.args else self.code

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only details (a code override, a limit, a status) survive pickling, e.g. from a decode
        # child: the default reduction calls ``cls(*args)`` and would drop them.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[DfscanError], args: tuple[object, ...], state: dict[str, object]) -> DfscanError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


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
    """A path that does not exist (a host name that does not resolve is HOST_NOT_FOUND)."""

    code = "FILE_NOT_FOUND"


class HostNotFoundError(DfscanError):
    """A URL whose host name does not resolve, or resolves to no address (DNS)."""

    code = "HOST_NOT_FOUND"


class FetchTimeoutError(DfscanError):
    """Connect, read or total deadline exceeded."""

    code = "FETCH_TIMEOUT"
    permanent = False


class FetchError(DfscanError):
    """The connection failed (refused, reset, TLS failure)."""

    code = "FETCH_FAILED"
    permanent = False


class TooLargeError(DfscanError):
    """Over one of the limits on what one input may cost; the message ends with ``(limit: NAME)``."""

    code = "TOO_LARGE"
    limit = "bytes"

    def __init__(self, message: str, *, limit: str | None = None) -> None:
        super().__init__(message)
        if limit is not None:
            if limit not in LIMITS:
                raise ValueError(f"unknown limit {limit!r}; add it to dfscan.exceptions.LIMITS")
            self.limit = limit

    @property
    def message(self) -> str:
        return f"{super().message} (limit: {self.limit})"


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


class ImageTooLargeError(TooLargeError):
    """TOO_LARGE for an image: pixels, frames or pages, decode memory, decode time."""

    limit = "image_pixels"


class ImageTooComplexError(DfscanError):
    """Structure no real image has and whose parsing cost grows with it (scans, chunks, tags, EXIF)."""

    code = "IMAGE_TOO_COMPLEX"


# --- videos ----------------------------------------------------------------------------------


class CorruptVideoError(DfscanError):
    """An allowed video container whose data is truncated or broken, or whose sampled frames do not decode."""

    code = "CORRUPT_VIDEO"


class VideoTooLongError(DfscanError):
    """A video longer than DFSCAN_MAX_VIDEO_SECONDS, by its header or by its timestamps."""

    code = "VIDEO_TOO_LONG"


class VideoTooLargeError(TooLargeError):
    """TOO_LARGE for a video: frame pixels, streams, memory, decode time."""

    limit = "frame_pixels"


class BudgetExceededError(DfscanError):
    """A job used up its budget (working seconds, decoded pixel bytes, model or detector inputs); the
    detail names the stage and the limit. Retried only when the time ran out on a busy worker."""

    code = "BUDGET_EXCEEDED"

    def __init__(self, message: str, *, stage: str, limit: str, permanent: bool = True) -> None:
        super().__init__(message)
        self.stage = stage
        self.limit = limit
        self.permanent = permanent


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


class DeviceFaultError(InferenceError):
    """The accelerator is broken for this process (a sticky CUDA error: an illegal memory access, a
    device-side assert, ECC): every later call fails too. The worker puts its claimed jobs back without
    spending their attempt and exits with status 1, so the orchestrator restarts it on a healthy context."""

    code = "DEVICE_FAULT"
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


class BadOptionError(DfscanError, ValueError):
    """A per-job option with a value dfscan does not know (``explain`` not a boolean, ``faces`` not auto,
    require or off): refused at every intake (dfscan/options.py)."""

    code = "BAD_OPTION"


class UnknownIdError(DfscanError, LookupError):
    """A well-formed id (submission, delivery, training run, model version) that names nothing stored."""

    code = "UNKNOWN_ID"


class NothingToRollBackError(DfscanError, LookupError):
    """`dfscan models rollback` with nothing promoted: the default model (DFSCAN_MODEL) already serves."""

    code = "NOTHING_TO_ROLL_BACK"


class CalibrationMismatchError(DfscanError):
    """`dfscan models promote`: the version's threshold was measured on another road (faces mode, face
    detector or margin) than the one it would serve on; re-measure it with `dfscan models calibrate`."""

    code = "CALIBRATION_MISMATCH"


class WaitTimeoutError(DfscanError, TimeoutError):
    """`submit --wait --timeout` (Submission.wait) gave up before every job was final; the jobs go on."""

    code = "WAIT_TIMEOUT"
    permanent = False


class ConfigError(DfscanError):
    """A setting that is missing or wrong for the command (e.g. Flower without a password)."""

    code = "CONFIG_ERROR"


# --- the HTTP API ------------------------------------------------------------------------------


class UnauthenticatedError(DfscanError):
    """An HTTP API request without a valid key: none given, malformed, unknown or revoked (401)."""

    code = "UNAUTHENTICATED"


class ForbiddenError(DfscanError):
    """An HTTP API key without the scope the endpoint needs (submit, read or review) (403)."""

    code = "FORBIDDEN"


class RateLimitedError(DfscanError):
    """An HTTP API key over its quota (requests per second or jobs outstanding); retry after
    ``Retry-After`` seconds (429)."""

    code = "RATE_LIMITED"
    permanent = False

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MalformedRequestError(DfscanError):
    """An HTTP request whose body cannot be parsed (not JSON, a broken multipart body) (400)."""

    code = "MALFORMED_REQUEST"


class RequestTimeoutError(DfscanError):
    """An HTTP request body that did not arrive within DFSCAN_API_BODY_TIMEOUT seconds (408)."""

    code = "REQUEST_TIMEOUT"
    permanent = False


class UnknownEndpointError(DfscanError):
    """An HTTP path the API does not have, or a method the path does not take (404 or 405)."""

    code = "UNKNOWN_ENDPOINT"


# --- the TOO_LARGE family and the codes of the previous release ---------------------------------


class Limit(NamedTuple):
    """One limit a TOO_LARGE error can name: what sets it, the code it had before TOO_LARGE, and the
    name of its value in ``dfscan.settings.FIXED`` when it is a fixed value rather than a setting."""

    set_by: str
    former_code: str
    fixed: str = ""


LIMITS: dict[str, Limit] = {
    "bytes": Limit("DFSCAN_MAX_BYTES; DFSCAN_MAX_VIDEO_BYTES for a video", "TOO_LARGE"),
    "image_pixels": Limit(
        "DFSCAN_MAX_PIXELS (a TIFF tile too); Pillow's decompression-bomb check", "IMAGE_TOO_LARGE"
    ),
    "image_frames": Limit("DFSCAN_MAX_FRAMES: frames of an animation, pages of a TIFF", "IMAGE_TOO_LARGE"),
    "decode_memory": Limit(
        "DFSCAN_DECODE_MEMORY, or the process ran out of memory decoding it", "IMAGE_TOO_LARGE"
    ),
    "decode_time": Limit(
        "CPU seconds of one decode in a decode child (DFSCAN_DECODE_PROCESSES > 0)",
        "IMAGE_TOO_COMPLEX",
        "decode_timeout",
    ),
    "frame_pixels": Limit("pixels per video frame", "VIDEO_TOO_LARGE", "max_video_pixels"),
    "streams": Limit("streams per video (more than any upload has)", "VIDEO_TOO_LARGE"),
    "video_memory": Limit("the process ran out of memory reading or decoding a video", "VIDEO_TOO_LARGE"),
    "video_time": Limit(
        "seconds one video may spend being indexed and decoded", "VIDEO_TOO_LARGE", "video_deadline"
    ),
}

# Codes renamed in this release (new code -> the code stored before it). TOO_LARGE's former code
# depends on its limit (``LIMITS``). Both tables go in the next release.
RENAMED: dict[str, str] = {"FILE_NOT_FOUND": "NOT_FOUND", "HOST_NOT_FOUND": "NOT_FOUND"}

_LIMIT_SUFFIX = re.compile(r"\(limit: ([a-z_]+)\)$")


def error_detail(code: str | None, message: str | None) -> dict[str, str] | None:
    """The machine-readable detail of a stored failure: ``limit`` for TOO_LARGE (from the message's
    ``(limit: NAME)`` suffix) and, for one release, ``former_code``: the code the same failure had
    before (TOO_LARGE, IMAGE_TOO_LARGE, VIDEO_TOO_LARGE, IMAGE_TOO_COMPLEX, NOT_FOUND). None when
    there is nothing to add."""
    if code == TooLargeError.code:
        found = _LIMIT_SUFFIX.search(message or "")
        limit = found.group(1) if found and found.group(1) in LIMITS else TooLargeError.limit
        return {"limit": limit, "former_code": LIMITS[limit].former_code}
    if code in RENAMED:
        return {"former_code": RENAMED[code]}
    return None


def error_classes() -> dict[str, type[DfscanError]]:
    """Every stable code with the class that defines it (subclasses that keep their parent's code, like
    ImageTooLargeError, are left out)."""
    out: dict[str, type[DfscanError]] = {}
    stack: list[type[DfscanError]] = [DfscanError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if "code" in cls.__dict__:
            out.setdefault(cls.code, cls)
    return dict(sorted(out.items()))


def error_codes() -> dict[str, str]:
    """Every stable code with the first line of its docstring (docs/errors.md and tests)."""
    return {code: (cls.__doc__ or "").strip().splitlines()[0] for code, cls in error_classes().items()}
