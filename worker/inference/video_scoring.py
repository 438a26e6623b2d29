"""A video as many model inputs of one job: sample frames, submit each to the shared batcher, aggregate.

:func:`score_video` is what the judging path calls for bytes that :func:`~worker.inference.media.is_video`
says are a video. Each sampled frame is preprocessed (the checkpoint's own processor config, as for
images) and submitted to the same batcher as images, as soon as it is decoded, so decoding later frames
overlaps the model on earlier ones. At most ``VideoPolicy.in_flight`` frames of one video wait in the
batcher at a time (``DFSCAN_VIDEO_IN_FLIGHT``, default 2), so a video never holds more than that many
tensors (600 KB each at 224 px). The Judge submits them as background items (``batcher.BACKGROUND``):
images queued after them still run first, and on a CPU never share a batch with them. Measured with
``python -m bench.video fairness`` (ViT-B/16 on CPU, images at random moments): an image beside a
video took 1.23x its latency alone (p90 1.09 s vs 0.71 s); 1.98x when frames were batched with images.

Faces (``faces``: a :class:`FrameFaces`, given when the Judge has a FacePolicy): each sampled frame's
faces are found by the Judge's face micro-batcher (batched with other jobs' images and frames), chosen
(at most ``max_faces``, none under ``min_face_px``: measured in the sampled frame's own pixels, the
pixels a crop is cut from) and square-cropped with the margin; every crop is one model input of the
same batcher (:func:`frame_inputs`). A frame's p(fake) is the maximum over its crops. A frame without
a face is judged whole in ``auto`` and not judged in ``require`` (its ``fake_score`` is None); the video
score aggregates the judged frames only, and a video with no judged frame has no score (the Judge
answers done / ``not_applicable``, as for an image without a face). Face boxes are reported in pixels of
the frame as decoded, before the scaling to ``frame_side`` (``SampledFrame.size``).

The in-flight cap counts **model inputs** (face crops or whole frames), not frames: a frame with 3 faces
holds 3 of the ``in_flight`` places. A frame with more inputs than the cap is submitted alone once
nothing else of the video is waiting. Face detection is not counted: one frame of the video waits on the
detector at a time (the frame just decoded), and that wait is ``detect_ms``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from PIL import Image

from dfscan.verdicts import FaceVerdict
from worker.inference.aggregate import aggregate_frames
from worker.inference.faces import Face, FacePolicy, select_faces, square_crop
from worker.inference.preprocess import PreprocessConfig, to_tensor
from worker.inference.video import VideoInfo, VideoPolicy, open_video

Submit = Callable[[torch.Tensor], "Future[float]"]
# One frame's faces, in the frame's pixels (the Judge's face micro-batcher, waited on).
FindFaces = Callable[[Image.Image], list[Face]]


@dataclass(frozen=True)
class FrameFaces:
    """Frames judged on faces: ``find`` detects one frame's faces, ``policy`` chooses and crops them."""

    find: FindFaces
    policy: FacePolicy


@dataclass(frozen=True)
class FrameScore:
    """One sampled frame's time (seconds from the start) and p(fake) (None: not judged, ``require``
    and no face); ``faces`` as for images, boxes in pixels of the frame as decoded."""

    t: float
    fake_score: float | None
    faces: list[FaceVerdict] = field(default_factory=list)


@dataclass(frozen=True)
class VideoScore:
    """A judged video: its aggregate p(fake) and most suspicious moment (None when no frame was judged),
    frames, and stage timings."""

    fake_score: float | None
    peak_t: float | None
    duration_s: float
    frames: list[FrameScore]
    info: VideoInfo
    decode_ms: float
    infer_ms: float
    detect_ms: float = 0.0

    @property
    def on_faces(self) -> bool:
        """Whether any frame was judged on faces."""
        return any(frame.faces for frame in self.frames)


def frame_inputs(
    image: Image.Image,
    cfg: PreprocessConfig,
    faces: Sequence[Face] = (),
    *,
    margin: float = 0.3,
    whole: bool = True,
) -> list[torch.Tensor]:
    """The model inputs of one frame: the square crop (with ``margin``) around each of ``faces``; with no
    face, the whole frame when ``whole`` (faces off or ``auto``), else none (``require``: not judged)."""
    if faces:
        return [to_tensor(square_crop(image, face, margin), cfg) for face in faces]
    return [to_tensor(image, cfg)] if whole else []


def scale_box(
    box: tuple[int, int, int, int], frame: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``box`` (x, y, w, h) in pixels of an image of ``frame`` size, mapped to an image of ``size``
    (the frame as decoded, before scaling), rounded and kept inside it."""
    sx, sy = size[0] / frame[0], size[1] / frame[1]
    x, y, w, h = box
    left = max(0, min(size[0] - 1, round(x * sx)))
    top = max(0, min(size[1] - 1, round(y * sy)))
    right = max(left + 1, min(size[0], round((x + w) * sx)))
    bottom = max(top + 1, min(size[1], round((y + h) * sy)))
    return left, top, right - left, bottom - top


def score_video(
    data: bytes,
    policy: VideoPolicy,
    cfg: PreprocessConfig,
    submit: Submit,
    *,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    faces: FrameFaces | None = None,
) -> VideoScore:
    """Sample ``data``, score every frame through ``submit`` (a batcher's), aggregate; with ``faces``,
    each frame is judged on its faces (see the module docstring).

    Raises the video errors of :mod:`worker.inference.video`, whatever a frame's future raises (an
    ``InferenceError`` from the model: the job goes back to the queue), and ``TimeoutError`` when one
    frame waits longer than ``timeout`` seconds for the model.
    """
    max_in_flight = policy.in_flight if max_in_flight is None else max_in_flight
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    started = time.perf_counter()
    # (t, the frame's chosen faces mapped to its decoded size, their futures)
    pending: deque[tuple[float, list[tuple[Face, tuple[int, int, int, int]]], list[Future[float]]]] = deque()
    in_flight = 0
    scores: list[FrameScore] = []
    waited = detected = 0.0

    def collect_oldest() -> None:
        nonlocal waited, in_flight
        t, chosen, futures = pending.popleft()
        before = time.perf_counter()
        results = [float(f.result(timeout=timeout)) for f in futures]
        waited += time.perf_counter() - before
        in_flight -= len(futures)
        judged = (
            [FaceVerdict(box, face.score, p) for (face, box), p in zip(chosen, results, strict=True)]
            if chosen
            else []
        )
        # A frame's score is its most suspicious input: the max over its faces, or the whole frame.
        scores.append(FrameScore(t=t, fake_score=max(results) if results else None, faces=judged))

    # Futures left behind by an error part-way are not cancelled (the batcher sets every result it
    # computes); they are simply dropped.
    with open_video(data, policy) as video:  # one demux pass: the caps, the info and the frames
        info = video.info
        for frame in video.frames:
            chosen: list[Face] = []
            if faces is not None:
                before = time.perf_counter()
                found = faces.find(frame.image)
                detected += time.perf_counter() - before
                chosen = select_faces(found, faces.policy.max_faces, faces.policy.min_face_px)
            inputs = frame_inputs(
                frame.image,
                cfg,
                chosen,
                margin=faces.policy.margin if faces is not None else 0.0,
                whole=faces is None or faces.policy.mode != "require",
            )
            size = frame.size or frame.image.size
            mapped = [(face, scale_box(face.box, frame.image.size, size)) for face in chosen]
            while pending and in_flight + len(inputs) > max_in_flight:
                collect_oldest()
            pending.append((frame.t, mapped, [submit(tensor) for tensor in inputs]))
            in_flight += len(inputs)
    while pending:
        collect_oldest()
    total = time.perf_counter() - started
    judged = [(s.t, s.fake_score) for s in scores if s.fake_score is not None]
    result = aggregate_frames(judged) if judged else None
    return VideoScore(
        fake_score=result.fake_score if result is not None else None,
        peak_t=result.peak_t if result is not None else None,
        duration_s=info.duration_s,
        frames=scores,
        info=info,
        decode_ms=(total - waited - detected) * 1000.0,
        infer_ms=waited * 1000.0,
        detect_ms=detected * 1000.0,
    )
