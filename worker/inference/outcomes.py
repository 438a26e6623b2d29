"""What a judged source's facts become in its verdict: a failed verdict's code, a clip's timeline and face
counts, the duplicate cache's counts, and what the near-duplicate look-up adds. Pure: no model, no I/O."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace

from dfscan.exceptions import DfscanError, InferenceError
from dfscan.verdicts import FAILED, Frame, Stored, Verdict
from worker.inference.hashing.pdq import Near, Pdq, pdq_of
from worker.inference.regions import ClipFrame, ClipScore

log = logging.getLogger(__name__)

# How long a caller waits for the model thread before its image counts as a model fault.
MODEL_TIMEOUT_S = 600.0


def failed(source: str, exc: Exception, *, threshold: float, model_version: str, **facts: object) -> Verdict:
    """The failed verdict of ``exc``: the input's own code (retryable unless permanent), a model fault
    (``INFERENCE_FAILED``), or an unexpected bug (``INTERNAL_ERROR``, retryable)."""
    if isinstance(exc, TimeoutError):  # a future of the model (or face detector) batcher ran out
        exc = InferenceError(f"the model did not answer within {MODEL_TIMEOUT_S:.0f}s")
    if not isinstance(exc, DfscanError):
        log.error("unexpected error judging %s: %r", source, exc, exc_info=exc, extra={"source": source})
        exc = DfscanError(f"unexpected {type(exc).__name__}: {exc}", code="INTERNAL_ERROR")
        retryable = True
    else:
        retryable = not exc.permanent
        if type(exc) is DfscanError:  # the base class is an internal error: worth another try
            retryable = True
    if isinstance(exc, InferenceError):
        log.error("model fault judging %s: %s", source, exc, extra={"model_version": model_version})
    return Verdict(
        source=source,
        status=FAILED,
        threshold=threshold,
        model_version=model_version,
        error_code=exc.code,
        error=exc.message,
        retryable=retryable,
        **facts,  # type: ignore[arg-type]
    )


def hashing(frames: Iterable[ClipFrame], hashed: list[Pdq]) -> Iterator[ClipFrame]:
    """Pass ``frames`` on, appending each frame's PDQ hash (from its pixels, at its time) to ``hashed``."""
    for frame in frames:
        if frame.image is not None:
            hashed.append(pdq_of(frame.image, frame.t))
        yield frame
        del frame


def with_near(verdict: Verdict, near: Near | None) -> Verdict:
    """``verdict`` with what the near-duplicate look-up found: the earlier job it repeats, the banks it
    matched, and a label a bank forces."""
    if near is None or not verdict.done:
        return verdict
    changes: dict[str, object] = {"matches": near.matches}
    if near.stored is not None:
        changes.update(near_duplicate_of=near.of, near_distance=near.distance)
    if near.force_label is not None and verdict.fake_score is not None:  # not_applicable stays so
        changes["label"] = near.force_label
    return replace(verdict, **changes)  # type: ignore[arg-type]


def timeline(scored: ClipScore) -> tuple[Frame, ...]:
    return tuple(Frame(t=f.t, fake_score=f.fake_score, faces=tuple(f.faces)) for f in scored.frames)


def ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def face_counts(scored: ClipScore) -> dict[str, object]:
    """A verdict's face counts (found, judged, skipped by reason) over every frame; none with faces off."""
    counts = scored.face_counts
    if counts is None:
        return {}
    return {"faces_found": counts.found, "faces_judged": counts.judged, "faces_skipped": dict(counts.skipped)}


def stored_counts(stored: Stored) -> dict[str, object]:
    """The duplicate cache's face counts (absent when faces were off or for verdicts stored without them)."""
    if stored.faces_found is None:
        return {}
    return {
        "faces_found": stored.faces_found,
        "faces_judged": stored.faces_judged,
        "faces_skipped": dict(stored.faces_skipped or {}),
    }
