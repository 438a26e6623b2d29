"""The signals a verdict carries beside its score: what its bytes declare about their origin
(provenance), a second model's opinion (a still image judged whole; a clip's sampled frames each judged
whole and gathered by the first model's rule across frames), and heatmaps of what the model looked at.
Each is paid only when its setting asks for it; :class:`worker.inference.judge.Judge` calls these on its
one road."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from dfscan.verdicts import Provenance, SecondOpinion, combine
from worker.inference.budget import Budget
from worker.inference.images.decode import ImagePolicy
from worker.inference.model.classifier import Classifier
from worker.inference.model.preprocess import to_tensor
from worker.inference.provenance import ProvenancePolicy, read_provenance
from worker.inference.regions import ClipFrame
from worker.inference.video.aggregate import aggregate_frames

log = logging.getLogger(__name__)

# The batcher's name for the second model (DFSCAN_SECOND_MODEL).
SECOND = "second"

# Submit one whole image to the second model: ``(memo key, pixels) -> (future, whether it was new)``.
ScoreSecond = Callable[[str, torch.Tensor], "tuple[Future[float], bool]"]


def provenance_of(data: bytes, policy: ProvenancePolicy, images: ImagePolicy, media: str) -> Provenance:
    """What ``data`` declares about its origin (:mod:`worker.inference.provenance`), bounded by its
    own caps (it never fails a verdict); the native C2PA reader runs in a decode child when decodes
    do."""
    isolate = None
    if images.decode_processes > 0:
        from worker.inference.images.decode_pool import run_isolated

        def isolate(fn: Callable[..., Provenance], *args: object) -> Provenance:
            return run_isolated(images, fn, *args)

    try:
        return read_provenance(data, policy, media=media, isolate=isolate)
    except Exception as exc:  # a bug in reading declarations never costs the verdict
        log.error("provenance reading failed: %r", exc, exc_info=exc)
        return Provenance(error=f"unreadable: {type(exc).__name__}")


def with_second(
    frames: Iterable[ClipFrame],
    budget: Budget,
    futures: list[tuple[Future[float], bool]],
    second: Classifier,
    score: ScoreSecond,
) -> Iterator[ClipFrame]:
    """``frames`` (one: a still image), its whole image submitted to the second model on the way
    (preprocessed as that model's checkpoint says); the future is appended to ``futures``."""
    for frame in frames:
        if not futures:
            if frame.image is None:
                raise ValueError("a second opinion needs the frame's image")
            budget.take_model_inputs(1)
            pixels = to_tensor(frame.image, second.preprocess)
            futures.append(score(f"{frame.key}#second", pixels))
        yield frame
        del frame


@dataclass
class ClipSecond:
    """A clip's second opinion in progress: each sampled frame judged whole by the second model
    (``futures``: its time, the future, whether this call submitted it)."""

    futures: list[tuple[float, Future[float], bool]] = field(default_factory=list)

    def score(self, timeout: float | None) -> float | None:
        """The second model's p(fake) for the clip, by the first model's rule across frames (the maximum
        of a moving median: :func:`~worker.inference.video.aggregate.aggregate_frames`); None when no
        frame was judged."""
        scores = [(t, float(future.result(timeout=timeout))) for t, future, _ in self.futures]
        return aggregate_frames(scores).fake_score if scores else None

    @property
    def cached(self) -> bool:
        return not any(new for _, _, new in self.futures)


def with_second_per_frame(
    frames: Iterable[ClipFrame],
    budget: Budget,
    clip: ClipSecond,
    second: Classifier,
    score: ScoreSecond,
    *,
    max_pending: int,
    timeout: float | None,
) -> Iterator[ClipFrame]:
    """``frames`` of a clip (a video, an animated image), each frame's whole image submitted to the second
    model on the way (one model input of the job's budget each). At most ``max_pending`` of them wait in
    the batcher at once (the clip's ``in_flight`` bound): the next frame waits for the oldest, outside
    the job's working clock."""
    for frame in frames:
        if frame.image is None:
            raise ValueError("a second opinion needs the frame's image")
        budget.take_model_inputs(1)
        pending = [future for _, future, _ in clip.futures if not future.done()]
        if len(pending) >= max_pending:
            with budget.waiting():
                pending[0].result(timeout=timeout)
        future, new = score(f"{frame.key}#second", to_tensor(frame.image, second.preprocess))
        clip.futures.append((frame.t, future, new))
        yield frame
        del frame


def opinion(
    first: float, second: float, *, threshold: float, max_disagreement: float, second_model: Classifier
) -> SecondOpinion:
    """The two models' scores combined (:func:`dfscan.verdicts.combine`)."""
    return combine(
        first,
        second,
        threshold=threshold,
        max_disagreement=max_disagreement,
        model_version=second_model.version,
    )
