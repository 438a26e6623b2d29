"""Judge a source: the one road every image takes, whoever asked for it.

``dfscan scan`` (in-process), the Celery worker and ``dfscan evaluate`` all call :meth:`Judge.judge`
(or :meth:`Judge.judge_bytes`) and get a :class:`dfscan.verdicts.Verdict`; the edges only move data
in and out (rows, messages, output). Pure: no database, no broker.

One source, on the calling thread::

    read (URL or confined path) -> sha256 -> duplicate cache -> decode (bounded) -> preprocess
        -> the model's DynamicBatcher (one model thread, micro-batches across callers) -> verdict

With faces on (a :class:`~worker.inference.faces.FacePolicy`, ``DFSCAN_FACES`` auto or require) the
image is decoded at full size and its faces are found by the face detector (its own micro-batcher:
one detection thread on the model's device, batches across callers); each chosen face is cropped
(square, with the margin) and preprocessed by the checkpoint's processor, and every crop goes to the
same model batcher (one image, several model inputs). The image's p(fake) is the maximum over its
faces. No face: ``auto`` judges the whole image (``judged_on`` "image"), ``require`` answers done
with label ``not_applicable`` and no score.

A video (sniffed from the bytes: :func:`~worker.inference.media.is_video`) takes the same road with
many inputs: its sampled frames are preprocessed and submitted to the same batcher, at most
``VideoPolicy.in_flight`` at a time, and aggregated into one verdict with
``media="video"``, its duration, peak time and frames (:mod:`worker.inference.video_scoring`). The
duplicate cache answers a video already judged with the same model *and sampling* (its verdicts carry
:attr:`Judge.video_version`, ``<version>+video:frames=32:side=640``) with its timeline, nothing decoded;
an image's answer is never taken for a video. With faces on, each sampled frame goes
through the faces path above (the same face micro-batcher, crops to the same model batcher; a frame's
p(fake) is the max over its faces; no face: ``auto`` judges the whole frame, ``require`` leaves the
frame unjudged); the video is ``judged_on`` "faces" when any frame was, and a video with no face in
any frame under ``require`` is done with label ``not_applicable`` and no score, like an image.

Many threads call ``judge`` at once (a worker's task threads, ``judge_stream``'s pool), so fetch and
decode of one image overlap the model running on others, and the model sees batches of whatever is
waiting (Triton's dynamic batcher, Ray Serve's ``@serve.batch``). A video's frames and crops go to both
batchers as ``BACKGROUND`` items: images are batched first, and on a CPU never together with them.

Errors never escape as exceptions, with one exception: a failure of the caller's ``known`` look-up
(its database is down) propagates, so the caller can treat it as an outage. Every other problem is a
failed verdict with a stable code: the input's own (``DfscanError``, permanent or not), a model
fault (``INFERENCE_FAILED``, retryable), or an unexpected bug (``INTERNAL_ERROR``, retryable: the
worker tries again up to ``DFSCAN_MAX_ATTEMPTS``; ``dfscan scan`` has one attempt).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import torch
from PIL import Image

from dfscan.exceptions import DfscanError, InferenceError
from dfscan.verdicts import (
    DONE,
    FACES,
    FAILED,
    IMAGE,
    NOT_APPLICABLE,
    VIDEO,
    FaceVerdict,
    Frame,
    Stored,
    Verdict,
    label_for,
)
from worker.inference.batcher import BACKGROUND, FOREGROUND, DynamicBatcher, MicroBatcher
from worker.inference.faces import Face, FacePolicy, select_faces, square_crop
from worker.inference.images import ImagePolicy, decode_with_size, image_sha256, sniff_format
from worker.inference.media import video_container
from worker.inference.model import Detector
from worker.inference.preprocess import load_pixels, to_tensor
from worker.inference.sources import SourcePolicy, read_source
from worker.inference.video import VideoPolicy
from worker.inference.video_scoring import FrameFaces, score_video

log = logging.getLogger(__name__)

# ``known(sha256, model_version)``: p(fake) an earlier verdict gave the same bytes with the same model
# (a float), or what it said in full (a Stored: score or none, judged_on, faces).
Known = Callable[[str, str], "float | Stored | None"]

# How long a caller waits for the model thread before its image counts as a model fault.
MODEL_TIMEOUT_S = 600.0
# Scores remembered by sha256, so repeats of the same bytes in flight or just judged skip the model.
_MEMO_SIZE = 4096


class Judge:
    """A detector, the batcher that feeds it, and the policies every source is judged under."""

    def __init__(
        self,
        detector: Detector,
        *,
        sources: SourcePolicy,
        images: ImagePolicy,
        videos: VideoPolicy | None = None,
        threshold: float = 0.5,
        batch_size: int = 8,
        batch_wait: float = 0.01,
        known: Known | None = None,
        faces: FacePolicy | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        self.detector = detector
        self.sources = sources
        self.images = images
        self.videos = videos or VideoPolicy()
        self.threshold = threshold
        self.known = known
        # on_batch(size, seconds) after each model batch: the worker's metrics hook (the core imports none)
        # On a CPU every input costs its full forward pass: a video's frames never share an image's
        # batch there, and run one at a time, so an image arriving waits for at most one frame (on a
        # GPU a few more inputs per batch are nearly free: frames fill images' batches and batch freely).
        mix = detector.device.type != "cpu"
        self.batcher = DynamicBatcher(
            detector.predict,
            max_batch=batch_size,
            max_wait=batch_wait,
            on_batch=on_batch,
            mix=mix,
            background_batch=None if mix else 1,
        )
        self.faces = faces
        self._face_batcher: MicroBatcher[Image.Image, list[Face]] | None = None
        if faces is not None:
            self._face_batcher = MicroBatcher(
                faces.detector.detect,
                max_batch=batch_size,
                max_wait=batch_wait,
                name="dfscan-faces",
                wrap_error=lambda exc: InferenceError(f"face detector fault: {type(exc).__name__}: {exc}"),
                mix=mix,
                reserved=1,  # a detector thread for interactive images only (worker/inference/lanes.py)
            )
        self._memo: OrderedDict[str, Future[float]] = OrderedDict()
        self._memo_lock = threading.Lock()

    @property
    def version(self) -> str:
        """The model version verdicts record (and the duplicate cache is keyed on): the detector's,
        plus ``+faces:...`` naming the face detector and its settings when faces are on."""
        if self.faces is None:
            return self.detector.version
        return f"{self.detector.version}+{self.faces.version}"

    @property
    def video_version(self) -> str:
        """The model version of video verdicts: :attr:`version` plus how frames are sampled
        (``+video:frames=32:side=640`` or ``fps=...``), so the duplicate cache never answers a video
        with a verdict sampled otherwise."""
        videos = self.videos
        sampling = f"fps={videos.fps:g}" if videos.fps else f"frames={videos.frames}"
        return f"{self.version}+video:{sampling}:side={videos.frame_side}"

    def with_threshold(self, threshold: float) -> Judge:
        """The same model and batcher under another threshold (a promotion that only moved it)."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        twin = copy.copy(self)
        twin.threshold = threshold
        return twin

    def close(self, timeout: float | None = None) -> None:
        """Stop taking images; those already submitted to the model are still judged."""
        if self._face_batcher is not None:
            self._face_batcher.close(timeout)
        self.batcher.close(timeout)

    # --- one source ------------------------------------------------------------------------------

    def judge(self, source: str) -> Verdict:
        """Read ``source`` (an http(s) URL or a path under the allowed roots) and judge it."""
        started = time.perf_counter()
        try:
            data = read_source(source, self.sources)
        except Exception as exc:
            return self._failed(source, exc, fetch_ms=_ms(started))
        return self.judge_bytes(data, source=source, fetch_ms=_ms(started))

    def judge_bytes(self, data: bytes, *, source: str = "<bytes>", fetch_ms: float = 0.0) -> Verdict:
        """Judge image or video bytes already read (``source`` names them in the verdict)."""
        container = video_container(data)
        if container is not None:
            return self._judge_video(data, container, source=source, fetch_ms=fetch_ms)
        sha = image_sha256(data)
        facts = {"image_sha256": sha, "n_bytes": len(data), "fetch_ms": fetch_ms}
        facts["image_format"] = sniff_format(data, self.images)
        stored = self.known(sha, self.version) if self.known is not None else None
        if stored is not None:
            return self._from_stored(source, stored, **facts)
        if self.faces is not None:
            return self._judge_faces(data, source, self.faces, facts)
        started = time.perf_counter()
        try:
            # Decode, reduce and preprocess inside the decode memory budget (and, with
            # DFSCAN_DECODE_PROCESSES, in a child process): only the model-sized tensor comes back.
            pixels, (width, height) = load_pixels(data, self.detector.preprocess, self.images)
        except Exception as exc:
            return self._failed(source, exc, **facts, decode_ms=_ms(started))
        facts.update(width=width, height=height, decode_ms=_ms(started))
        started = time.perf_counter()
        future, first = self._score(sha, pixels)
        try:
            score = future.result(timeout=MODEL_TIMEOUT_S)
        except Exception as exc:
            return self._failed(source, exc, **facts, infer_ms=_ms(started))
        return self._done(source, score, cached=not first, infer_ms=_ms(started), **facts)  # type: ignore[arg-type]

    def _judge_faces(self, data: bytes, source: str, policy: FacePolicy, facts: dict[str, object]) -> Verdict:
        started = time.perf_counter()
        try:
            # Full size: a face is cropped from the original pixels (no JPEG draft).
            image, (width, height) = decode_with_size(data, self.images)
        except Exception as exc:
            return self._failed(source, exc, **facts, decode_ms=_ms(started))
        facts.update(width=width, height=height, decode_ms=_ms(started))
        started = time.perf_counter()
        try:
            found = self._find_faces(image)
            detect_ms = facts["detect_ms"] = _ms(started)
            chosen = select_faces(found, policy.max_faces, policy.min_face_px)
            if not chosen and policy.mode == "require":
                return self._not_applicable(source, infer_ms=_ms(started) - detect_ms, **facts)
            crops = [square_crop(image, face, policy.margin) for face in chosen] or [image]
            futures = [self.batcher.submit(to_tensor(crop, self.detector.preprocess)) for crop in crops]
            scores = [future.result(timeout=MODEL_TIMEOUT_S) for future in futures]
        except Exception as exc:
            return self._failed(source, exc, **facts, infer_ms=_ms(started))
        infer_ms = _ms(started) - facts["detect_ms"]  # type: ignore[operator]
        if not chosen:  # auto, no face: the whole image was judged
            return self._done(source, scores[0], cached=False, infer_ms=infer_ms, **facts)  # type: ignore[arg-type]
        judged = tuple(
            FaceVerdict(face.box, face.score, score) for face, score in zip(chosen, scores, strict=True)
        )
        return self._done(
            source, max(scores), cached=False, infer_ms=infer_ms, judged_on=FACES, faces=judged, **facts
        )

    def _find_faces(self, image: Image.Image, priority: int = FOREGROUND) -> list[Face]:
        """The faces of one image or video frame, from the face micro-batcher (waited on)."""
        assert self._face_batcher is not None
        return self._face_batcher.submit(image, priority=priority).result(timeout=MODEL_TIMEOUT_S)

    def _find_frame_faces(self, image: Image.Image) -> list[Face]:
        return self._find_faces(image, BACKGROUND)

    def _submit_frame(self, pixels: torch.Tensor) -> Future[float]:
        return self.batcher.submit(pixels, priority=BACKGROUND)

    def _judge_video(self, data: bytes, container: str, *, source: str, fetch_ms: float) -> Verdict:
        """A video's verdict, under the version that names its sampling (:attr:`video_version`)."""
        verdict = self._video_verdict(data, container, source=source, fetch_ms=fetch_ms)
        return replace(verdict, model_version=self.video_version)

    def _video_verdict(self, data: bytes, container: str, *, source: str, fetch_ms: float) -> Verdict:
        sha = image_sha256(data)
        facts: dict[str, object] = {
            "image_sha256": sha,
            "n_bytes": len(data),
            "fetch_ms": fetch_ms,
            "image_format": container.upper(),
            "media": VIDEO,
        }
        # The same bytes judged before with this model and sampling: its verdict and frames, no decoding.
        stored = self.known(sha, self.video_version) if self.known is not None else None
        if isinstance(stored, Stored) and stored.media == VIDEO:
            facts.update(duration_s=stored.duration_s, peak_t=stored.peak_t, frames=stored.frames)
            return self._from_stored(source, stored, **facts)
        started = time.perf_counter()
        try:
            video = score_video(
                data,
                self.videos,
                self.detector.preprocess,
                self._submit_frame,  # behind images: a video never starves the images queued after it
                timeout=MODEL_TIMEOUT_S,
                faces=None if self.faces is None else FrameFaces(self._find_frame_faces, self.faces),
            )
        except Exception as exc:
            return self._failed(source, exc, **facts, decode_ms=_ms(started))
        facts.update(
            width=video.info.width,
            height=video.info.height,
            decode_ms=video.decode_ms,
            detect_ms=video.detect_ms,
            infer_ms=video.infer_ms,
            duration_s=video.duration_s,
            frames=tuple(Frame(t=f.t, fake_score=f.fake_score, faces=tuple(f.faces)) for f in video.frames),
        )
        if video.fake_score is None:  # require, and no face in any frame: nothing was judged
            return self._not_applicable(source, **facts)
        return self._done(
            source,
            video.fake_score,
            cached=False,
            judged_on=FACES if video.on_faces else IMAGE,
            peak_t=video.peak_t,
            **facts,  # type: ignore[arg-type]
        )

    def _score(self, sha: str, pixels: object) -> tuple[Future[float], bool]:
        """The model's score for these bytes: a future shared by every caller with the same sha256
        while it is in flight or remembered. Returns ``(future, True)`` for the caller that runs it."""
        with self._memo_lock:
            future = self._memo.get(sha)
            if future is not None:
                self._memo.move_to_end(sha)
                return future, False
            future = self.batcher.submit(pixels)  # type: ignore[arg-type]
            self._memo[sha] = future
            while len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
        future.add_done_callback(lambda f: self._forget_failure(sha, f))
        return future, True

    def _forget_failure(self, sha: str, future: Future[float]) -> None:
        if future.exception() is not None:  # a model fault is not remembered: the retry runs again
            with self._memo_lock:
                if self._memo.get(sha) is future:
                    del self._memo[sha]

    # --- verdicts --------------------------------------------------------------------------------

    def _done(
        self,
        source: str,
        score: float,
        *,
        cached: bool,
        judged_on: str = IMAGE,
        faces: tuple[FaceVerdict, ...] = (),
        **facts: object,
    ) -> Verdict:
        return Verdict(
            source=source,
            status=DONE,
            label=label_for(score, self.threshold),
            fake_score=score,
            threshold=self.threshold,
            model_version=self.version,
            cached=cached,
            judged_on=judged_on,
            faces=faces,
            **facts,  # type: ignore[arg-type]
        )

    def _from_stored(self, source: str, stored: float | Stored, **facts: object) -> Verdict:
        """The duplicate cache's answer as this judge's verdict (its threshold labels the score)."""
        if not isinstance(stored, Stored):
            stored = Stored(float(stored))
        if stored.fake_score is None:
            return Verdict(
                source=source,
                status=DONE,
                label=NOT_APPLICABLE,
                threshold=self.threshold,
                model_version=self.version,
                cached=True,
                judged_on=stored.judged_on,
                **facts,  # type: ignore[arg-type]
            )
        return self._done(
            source, stored.fake_score, cached=True, judged_on=stored.judged_on, faces=stored.faces, **facts
        )

    def _not_applicable(self, source: str, **facts: object) -> Verdict:
        """Done, but nothing was judged: faces were required and none was found (no score)."""
        return Verdict(
            source=source,
            status=DONE,
            label=NOT_APPLICABLE,
            threshold=self.threshold,
            model_version=self.version,
            judged_on=IMAGE,
            **facts,  # type: ignore[arg-type]
        )

    def _failed(self, source: str, exc: Exception, **facts: object) -> Verdict:
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
            log.error("model fault judging %s: %s", source, exc, extra={"model_version": self.version})
        return Verdict(
            source=source,
            status=FAILED,
            threshold=self.threshold,
            model_version=self.version,
            error_code=exc.code,
            error=exc.message,
            retryable=retryable,
            **facts,  # type: ignore[arg-type]
        )


def judge_stream(judge: Judge, sources: Iterable[str], *, threads: int) -> Iterator[Verdict]:
    """Judge ``sources`` on ``threads`` threads and yield one verdict per source, **in input order**.

    At most ``2 * threads`` sources are in flight, so memory stays bounded for any number of sources
    and the batcher always has the next images decoded. Closing the generator early waits for those
    in flight.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    iterator = iter(sources)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dfscan-judge") as pool:
        window: deque[Future[Verdict]] = deque()
        try:
            for source in iterator:
                window.append(pool.submit(judge.judge, source))
                if len(window) >= 2 * threads:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
