"""The one region road: a clip of frames -> the regions of each frame -> one batcher -> one result.

Every source is a clip: an image is a one-frame clip, an animated image (GIF, APNG, WebP, AVIF) and a
video are clips of sampled frames. transformers' ``ChunkPipeline`` is the shape:

1. **frames** (:class:`ClipFrame`): yielded one at a time by whoever decodes the source (the Judge:
   an image, an animation's sampled frames, a video's sampled frames);
2. **regions** (:func:`frame_regions`, the only place a frame becomes model inputs): the whole frame
   when faces are off; with faces, the square crop (with the margin) around each chosen face, and with
   no face the whole frame (``auto``) or nothing (``require``: the frame is not judged);
3. **the model**: every region goes through the Judge's batcher exactly once, through its in-flight
   memo (a region already in flight or just scored, e.g. the same bytes judged twice at once, shares
   the first one's future);
4. **gathering** (:func:`score_clip`): one rule per frame, the **maximum** over its regions (its most
   suspicious face, or the whole frame), and one rule across frames, the **maximum of a moving median**
   of 5 (:func:`~worker.inference.video.aggregate.aggregate_frames`); for one frame that is its own score.

At most ``max_in_flight`` regions of a clip wait in the batcher at once (a frame with more regions
than that is submitted alone once nothing else of the clip waits), so decoding the next frames
overlaps the model on earlier ones while a clip holds only a few tensors. Waiting for the model or the
face detector stops the job's :class:`~worker.inference.budget.Budget` clock; regions and detector
inputs are drawn from it.

Face boxes are reported in pixels of the frame as displayed (``ClipFrame.size``): a video frame or an
animation frame sampled at a reduced size has its boxes scaled back (:func:`scale_box`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from PIL import Image

from dfscan.verdicts import FaceVerdict, Heatmap
from worker.inference.budget import Budget
from worker.inference.faces.crops import Face, FacePolicy, crop_box, square_crop
from worker.inference.faces.screen import FaceCounts, choose_faces
from worker.inference.model.preprocess import PreprocessConfig, to_tensor
from worker.inference.video.aggregate import aggregate_frames

# One frame's faces, in the frame image's pixels (the Judge's face micro-batcher, waited on).
FindFaces = Callable[[Image.Image], list[Face]]


@dataclass(frozen=True)
class ClipFrame:
    """One frame of a clip: its time in seconds, its RGB pixels (``image``: faces are found and cropped
    in them), the size boxes are reported in (the frame as displayed; ``image`` may be smaller), and
    ``key``, what the in-flight memo knows the frame by (the source's sha256, plus the time in a clip).
    ``pixels``: the whole frame already preprocessed (an image decoded straight to the model's size,
    never held at full size); then ``image`` may be None when faces are off."""

    t: float
    size: tuple[int, int]
    key: str
    image: Image.Image | None = None
    pixels: torch.Tensor | None = None


@dataclass(frozen=True)
class Region:
    """One model input of a frame: a face crop (``face``, ``box`` in the frame's displayed pixels) or
    the whole frame (``face`` None); ``key`` is its memo key."""

    key: str
    pixels: torch.Tensor
    face: Face | None = None
    box: tuple[int, int, int, int] | None = None
    # What ``pixels`` cover, (x, y, w, h) in the frame's displayed pixels: a face's square crop with
    # its margin (None: the whole frame). An explanation's heatmap is drawn over it.
    area: tuple[int, int, int, int] | None = None


def frame_regions(
    frame: ClipFrame, cfg: PreprocessConfig, faces: FacePolicy | None = None, find: FindFaces | None = None
) -> tuple[list[Region], FaceCounts | None]:
    """The regions of ``frame``, as serving, training and evaluation judge it (see the module docstring),
    and its face counts (None when faces are off): with ``faces`` (and ``find``, the face detector), the
    chosen faces' square crops (:func:`~worker.inference.faces.screen.choose_faces`: every face found is
    judged or counted under a reason); else, or with no face chosen in ``auto``, the whole frame; with no
    face chosen in ``require``, none."""
    if faces is None:
        return [_whole(frame, cfg)], None
    if frame.image is None or find is None:
        raise ValueError("judging on faces needs the frame's image and a face detector")
    choice = choose_faces(
        find(frame.image),
        max_faces=faces.max_faces,
        min_face_px=faces.min_face_px,
        min_score=faces.min_score,
    )
    chosen = choice.chosen
    if not chosen:
        return ([] if faces.mode == "require" else [_whole(frame, cfg)]), choice.counts
    return [
        Region(
            f"{frame.key}#face{face.box}",
            to_tensor(face_crop(frame.image, face, faces.margin), cfg),
            face,
            scale_box(face.box, frame.image.size, frame.size),
            scale_box(_xywh(crop_box(frame.image.size, face, faces.margin)), frame.image.size, frame.size),
        )
        for face in chosen
    ], choice.counts


def face_crop(image: Image.Image, face: Face, margin: float) -> Image.Image:
    """The region of ``image`` that judges ``face``: the square crop around it with ``margin``
    (:func:`~worker.inference.faces.crops.square_crop`). Serving, training (``dfscan train --faces``) and
    evaluation cut every face region with this function, from the full-size decoded image."""
    return square_crop(image, face, margin)


def _xywh(corners: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = corners
    return left, top, right - left, bottom - top


def _whole(frame: ClipFrame, cfg: PreprocessConfig) -> Region:
    if frame.pixels is not None:
        return Region(frame.key, frame.pixels)
    if frame.image is None:
        raise ValueError("a frame needs its image or its pixels")
    return Region(frame.key, to_tensor(frame.image, cfg))


def scale_box(
    box: tuple[int, int, int, int], frame: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``box`` (x, y, w, h) in pixels of an image of ``frame`` size, mapped to an image of ``size``
    (the frame as displayed, before any scaling), rounded and kept inside it."""
    if frame == size:
        return box
    sx, sy = size[0] / frame[0], size[1] / frame[1]
    x, y, w, h = box
    left = max(0, min(size[0] - 1, round(x * sx)))
    top = max(0, min(size[1] - 1, round(y * sy)))
    right = max(left + 1, min(size[0], round((x + w) * sx)))
    bottom = max(top + 1, min(size[1], round((y + h) * sy)))
    return left, top, right - left, bottom - top


@dataclass(frozen=True)
class FrameScore:
    """One frame's time and p(fake) (None: not judged, ``require`` and no face); ``faces`` as for images,
    boxes in pixels of the frame as displayed."""

    t: float
    fake_score: float | None
    faces: list[FaceVerdict] = field(default_factory=list)
    counts: FaceCounts | None = None


@dataclass(frozen=True)
class ClipScore:
    """A judged clip: its p(fake) and most suspicious moment (None when no frame was judged), its frames,
    whether every region's score came from the memo (``cached``), and where the time went: the whole
    road, waiting for the face detector, waiting for the model (milliseconds)."""

    fake_score: float | None
    peak_t: float | None
    frames: list[FrameScore]
    cached: bool
    total_ms: float
    detect_ms: float
    wait_ms: float
    # When explanations were asked for: one heatmap per region of the most suspicious frame (the only
    # frame of an image; a clip's frame with the highest score, the earliest of equals), ``t`` set for a clip.
    heatmaps: list[Heatmap] = field(default_factory=list)

    @property
    def on_faces(self) -> bool:
        """Whether any frame was judged on faces."""
        return any(frame.faces for frame in self.frames)

    @property
    def face_counts(self) -> FaceCounts | None:
        """The faces found, judged and skipped over every frame (None when faces are off)."""
        counts = [frame.counts for frame in self.frames if frame.counts is not None]
        return sum(counts, FaceCounts()) if counts else None


# ``submit(region)``: the region's future from the model batcher (through the memo), and whether this
# call put it there (False: it was already in flight or remembered).
Submit = Callable[[Region], "tuple[Future[float], bool]"]
# ``explain(region)``: the region's heatmap grid (rows of cells in [0, 1]), when explanations are asked for.
Explain = Callable[[Region], "tuple[tuple[float, ...], ...]"]
# ``observe(frame, score)``: called with each frame once its regions are scored (e.g. to draw it).
Observe = Callable[[ClipFrame, FrameScore], None]


@dataclass
class _Pending:
    frame: ClipFrame | None  # kept only for an observer
    t: float
    regions: list[Region]
    futures: list[Future[float]]
    counts: FaceCounts | None


def score_clip(
    frames: Iterable[ClipFrame],
    cfg: PreprocessConfig,
    submit: Submit,
    budget: Budget,
    *,
    faces: FacePolicy | None = None,
    find: FindFaces | None = None,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    observe: Observe | None = None,
    explain: Explain | None = None,
    clip: bool = False,
) -> ClipScore:
    """Score every frame of ``frames`` through its regions and gather them (see the module docstring).

    Raises whatever a frame source, the face detector or a region's future raises (an InferenceError
    from the model: the job goes back to the queue), BudgetExceededError, and ``TimeoutError`` when one
    region waits longer than ``timeout`` seconds for the model. ``explain``, when given, makes a heatmap
    of every region of the most suspicious frame once every frame is scored (on this thread: its cost
    counts in the job's budget). Only that frame's regions are kept for it while the clip goes on, so
    a clip of 32 frames pays for one frame's heatmaps and holds one frame's tensors more at most;
    ``clip`` stamps each heatmap with its frame's time."""
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    started = time.perf_counter()
    pending: deque[_Pending] = deque()
    in_flight = 0
    scores: list[FrameScore] = []
    waited = detected = 0.0
    cached = True
    suspect: tuple[float, float, list[Region]] | None = None  # (score, t, regions) of the frame to explain

    def timed_find(image: Image.Image) -> list[Face]:
        nonlocal detected
        assert find is not None
        budget.take_detector_inputs(1)
        before = time.perf_counter()
        try:
            with budget.waiting():
                return find(image)
        finally:
            detected += time.perf_counter() - before

    def collect_oldest() -> None:
        nonlocal waited, in_flight, suspect
        item = pending.popleft()
        before = time.perf_counter()
        with budget.waiting():
            results = [float(f.result(timeout=timeout)) for f in item.futures]
        waited += time.perf_counter() - before
        in_flight -= len(item.futures)
        judged = [
            FaceVerdict(region.box, region.face.score, p)
            for region, p in zip(item.regions, results, strict=True)
            if region.face is not None and region.box is not None
        ]
        # A frame's score is its most suspicious region: the max over its faces, or the whole frame.
        score = FrameScore(
            t=item.t, fake_score=max(results) if results else None, faces=judged, counts=item.counts
        )
        frame_p = score.fake_score
        if explain is not None and frame_p is not None and (suspect is None or frame_p > suspect[0]):
            suspect = (frame_p, item.t, item.regions)
        scores.append(score)
        if observe is not None and item.frame is not None:
            observe(item.frame, score)

    # Futures left behind by an error part-way are not cancelled (the batcher sets every result it
    # computes); they are simply dropped.
    for frame in frames:
        budget.enter("regions")
        regions, counts = frame_regions(frame, cfg, faces, timed_find if find is not None else None)
        budget.take_model_inputs(len(regions))
        cap = len(regions) if max_in_flight is None else max_in_flight
        while pending and in_flight + len(regions) > cap:
            collect_oldest()
        futures = []
        for region in regions:
            future, first = submit(region)
            cached = cached and not first
            futures.append(future)
        pending.append(_Pending(frame if observe is not None else None, frame.t, regions, futures, counts))
        in_flight += len(regions)
        del frame  # its pixels go as soon as the source releases them (and their share of the budget)
        budget.enter("frames")
    while pending:
        collect_oldest()
    heatmaps: list[Heatmap] = []
    if explain is not None and suspect is not None:
        budget.enter("explanation")
        _, t, regions = suspect
        heatmaps = [Heatmap(region.area, explain(region), t if clip else None) for region in regions]
    judged = [(s.t, s.fake_score) for s in scores if s.fake_score is not None]
    result = aggregate_frames(judged) if judged else None
    return ClipScore(
        fake_score=result.fake_score if result is not None else None,
        peak_t=result.peak_t if result is not None else None,
        frames=scores,
        cached=cached and bool(judged),
        total_ms=(time.perf_counter() - started) * 1000.0,
        detect_ms=detected * 1000.0,
        wait_ms=waited * 1000.0,
        heatmaps=heatmaps,
    )
