"""A video as many model inputs of one job: sample frames, submit each to the shared batcher, aggregate.

:func:`score_video` is what the judging path calls for bytes that :func:`~worker.inference.media.is_video`
says are a video. Each sampled frame is preprocessed (the checkpoint's own processor config, as for
images) and submitted to the same batcher as images, as soon as it is decoded, so decoding later frames
overlaps the model on earlier ones. At most ``VideoPolicy.in_flight`` frames of one video wait in the
batcher at a time (``DFSCAN_VIDEO_IN_FLIGHT``, default 2): a 32-frame video never puts more than that in
front of an image queued behind it, and never holds more than that many tensors (600 KB each at 224 px).
Measured with ``python -m bench.video fairness`` (ViT-B/16 on CPU, batch 8): an image's latency beside a
video was 2-2.5x its latency alone with 2 in flight, ~8x with 8 and ~15x with all 32 queued; the video
itself was at most ~15% slower with 2.

Faces: frames are judged whole (the faces ``off`` mode). The face path of issue 10 plugs in where a
frame becomes model inputs (:func:`frame_inputs`), and each frame's ``faces`` list is then filled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from PIL import Image

from worker.inference.aggregate import aggregate_frames
from worker.inference.preprocess import PreprocessConfig, to_tensor
from worker.inference.video import VideoInfo, VideoPolicy, probe_video, sample_frames

Submit = Callable[[torch.Tensor], "Future[float]"]


@dataclass(frozen=True)
class FrameScore:
    """One sampled frame's time (seconds from the start) and p(fake); ``faces`` as for images."""

    t: float
    fake_score: float
    faces: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True)
class VideoScore:
    """A judged video: its aggregate p(fake), most suspicious moment, frames, and stage timings."""

    fake_score: float
    peak_t: float
    duration_s: float
    frames: list[FrameScore]
    info: VideoInfo
    decode_ms: float
    infer_ms: float


def frame_inputs(image: Image.Image, cfg: PreprocessConfig) -> list[torch.Tensor]:
    """The model inputs of one frame: the whole frame (faces ``off``)."""
    return [to_tensor(image, cfg)]


def score_video(
    data: bytes,
    policy: VideoPolicy,
    cfg: PreprocessConfig,
    submit: Submit,
    *,
    max_in_flight: int | None = None,
    timeout: float | None = None,
) -> VideoScore:
    """Sample ``data``, score every frame through ``submit`` (a batcher's), aggregate.

    Raises the video errors of :mod:`worker.inference.video`, whatever a frame's future raises (an
    ``InferenceError`` from the model: the job goes back to the queue), and ``TimeoutError`` when one
    frame waits longer than ``timeout`` seconds for the model.
    """
    max_in_flight = policy.in_flight if max_in_flight is None else max_in_flight
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    started = time.perf_counter()
    info = probe_video(data, policy)
    pending: deque[tuple[float, list[Future[float]]]] = deque()
    in_flight = 0
    scores: list[FrameScore] = []
    waited = 0.0

    def collect_oldest() -> None:
        nonlocal waited, in_flight
        t, futures = pending.popleft()
        before = time.perf_counter()
        # A frame's score is its most suspicious input (one input while frames are judged whole).
        scores.append(FrameScore(t=t, fake_score=max(float(f.result(timeout=timeout)) for f in futures)))
        waited += time.perf_counter() - before
        in_flight -= len(futures)

    # Futures left behind by an error part-way are not cancelled (the batcher sets every result it
    # computes); they are simply dropped.
    for frame in sample_frames(data, policy):
        inputs = frame_inputs(frame.image, cfg)
        while pending and in_flight + len(inputs) > max_in_flight:
            collect_oldest()
        pending.append((frame.t, [submit(tensor) for tensor in inputs]))
        in_flight += len(inputs)
    while pending:
        collect_oldest()
    total = time.perf_counter() - started
    result = aggregate_frames([(s.t, s.fake_score) for s in scores])
    return VideoScore(
        fake_score=result.fake_score,
        peak_t=result.peak_t,
        duration_s=info.duration_s,
        frames=scores,
        info=info,
        decode_ms=(total - waited) * 1000.0,
        infer_ms=waited * 1000.0,
    )
