"""Judge a source: the one road every image, animation and video takes, whoever asked for it.

``dfscan scan`` (in-process), the Celery worker and ``dfscan evaluate`` all call :meth:`Judge.judge`
(or :meth:`Judge.judge_bytes`) and get a :class:`dfscan.verdicts.Verdict`; the edges only move data
in and out (rows, messages, output). Pure: no database, no broker.

One source, on the calling thread::

    Budget (the job's allowance) -> read (URL or confined path) -> sha256 -> duplicate cache
        -> frames (an image: one; an animated image or a video: sampled frames, bounded)
        -> regions of each frame (whole frame, or face crops with margin: regions.frame_regions)
        -> the model's DynamicBatcher, once per region, through the in-flight memo
        -> one score per frame (max over its regions), one across frames (moving median) -> verdict

Every stage draws from one :class:`~worker.inference.budget.Budget` made at the entrance (working
seconds, pixel bytes held, model and detector inputs); waiting for a batcher never counts, and running
out is ``BUDGET_EXCEEDED`` naming the stage and the limit. The road itself is
:mod:`worker.inference.regions`; this module holds the policies, batchers and verdicts, and sends a
source down its path: :mod:`worker.inference.judge_image` (still and animated images) or
:mod:`worker.inference.judge_video`. The signals beside a score (provenance, a second opinion) are
:mod:`worker.inference.signals`; a failed verdict and a clip's facts are :mod:`worker.inference.outcomes`.

- **An image** is a one-frame clip. Faces off: decoded straight to the model's size (inside the decode
  memory budget, in a decode child with ``DFSCAN_DECODE_PROCESSES``). Faces on (a
  :class:`~worker.inference.faces.crops.FacePolicy`, ``DFSCAN_FACES`` auto or require): decoded at full size,
  and that image counts against the job's and the process's decode memory until its crops are made; its
  faces come from the face detector's micro-batcher. No face: ``auto`` judges the whole image
  (``judged_on`` "image"), ``require`` answers done with label ``not_applicable`` and no score.
- **An animated image** (GIF, APNG, WebP, AVIF with several frames: :mod:`worker.inference.images.animation`)
  is a clip sampled like a video (``VideoPolicy.frames`` frames, longest side ``frame_side``); its
  verdict is an image's (``media`` "image") with its sampled ``frames``, under
  :attr:`Judge.animation_version`.
- **A video** (sniffed from the bytes: :func:`~worker.inference.sources.media.video_container`) is a clip of
  its sampled frames, at most ``VideoPolicy.in_flight`` regions in the batcher at a time; its verdict
  has ``media="video"``, its duration, peak time and frames, under :attr:`Judge.video_version`
  (``<version>+video:frames=32:side=640``), so the duplicate cache answers a video only with a verdict
  sampled the same way (its timeline, nothing decoded). A video under ``require`` with no face in any
  frame is done with label ``not_applicable`` and no score, like an image.

Many threads call ``judge`` at once (a worker's task threads, ``judge_stream``'s pool), so fetch and
decode of one image overlap the model running on others, and the model sees batches of whatever is
waiting (Triton's dynamic batcher, Ray Serve's ``@serve.batch``). The regions of a clip of several
frames go to both batchers as ``BACKGROUND`` items: images are batched first, and on a CPU never
together with them.

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

from dfscan.exceptions import BadOptionError, InferenceError
from dfscan.options import JobOptions
from dfscan.verdicts import (
    DONE,
    IMAGE,
    NOT_APPLICABLE,
    VIDEO,
    FaceVerdict,
    SecondOpinion,
    Stored,
    Verdict,
    label_for,
)
from worker.inference.budget import Budget, Limits
from worker.inference.faces.crops import Face, FacePolicy
from worker.inference.hashing.pdq import MediaHash, Near, NearPolicy, Pdq, Similar, frame_hashes
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge_image import judge_image
from worker.inference.judge_video import judge_video
from worker.inference.model.batcher import (
    FOREGROUND,
    PRIMARY,
    DynamicBatcher,
    MicroBatcher,
    is_sticky_device_error,
    model_error,
)
from worker.inference.model.classifier import Classifier
from worker.inference.model.explain import Grid, explainable, heatmap
from worker.inference.outcomes import MODEL_TIMEOUT_S, failed, ms, stored_counts, with_near
from worker.inference.provenance import ProvenancePolicy
from worker.inference.regions import ClipFrame, Observe, Region
from worker.inference.signals import SECOND, ClipSecond, opinion, provenance_of, with_second_per_frame
from worker.inference.sources.media import video_container
from worker.inference.sources.read import SourcePolicy, failed_media, read_source
from worker.inference.video.decode import VideoPolicy

log = logging.getLogger(__name__)

# ``known(sha256, model_version)``: p(fake) an earlier verdict gave the same bytes with the same model
# (a float), or what it said in full (a Stored: score or none, judged_on, faces).
Known = Callable[[str, str], "float | Stored | None"]

# Scores remembered by sha256, so repeats of the same bytes in flight or just judged skip the model.
_MEMO_SIZE = 4096


class Judge:
    """A classifier, the batcher that feeds it, and the policies every source is judged under."""

    def __init__(
        self,
        classifier: Classifier,
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
        limits: Limits | None = None,
        provenance: ProvenancePolicy | None = None,
        second: Classifier | None = None,
        second_disagreement: float = 0.5,
        explain: bool = False,
        explainer: Classifier | None = None,
        similar: Similar | None = None,
        near: NearPolicy | None = None,
        load_explainer: Callable[[], Classifier] | None = None,
        load_faces: Callable[[], FacePolicy | None] | None = None,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        self.classifier = classifier
        self.sources = sources
        self.images = images
        self.videos = videos or VideoPolicy()
        self.threshold = threshold
        self.known = known
        # The near-duplicate look-up (docs/near-duplicates.md) when a call does not bring its own.
        self.similar = similar
        self.near = near or NearPolicy()
        # One job's allowance (working seconds, pixel bytes held, model and detector inputs).
        self._limits_given = limits is not None
        self.limits = limits or Limits.for_policies(
            sources,
            images,
            self.videos,
            faces.max_faces if faces is not None else 0,
            second=second is not None,
        )
        # on_batch(size, seconds) after each model batch: the worker's metrics hook (the core imports none)
        # On a CPU every input costs its full forward pass: a video's frames never share an image's
        # batch there, and run one at a time, so an image arriving waits for at most one frame (on a
        # GPU a few more inputs per batch are nearly free: frames fill images' batches and batch freely).
        mix = classifier.device.type != "cpu"
        # A second opinion (DFSCAN_SECOND_MODEL): another classifier judging every still image whole (and
        # every sampled frame of a clip), fed by the same batcher (its inputs wait in the same lanes as
        # the first model's).
        self.second = second
        self.second_disagreement = second_disagreement
        # Heatmaps for every judged region of a still image, or of a clip's most suspicious frame (paid
        # only when asked for), made with
        # ``explainer``: the same checkpoint in torch float32 (the classifier itself when it is that).
        self.explainer = (explainer or classifier) if explain else None
        if self.explainer is not None and not explainable(self.explainer):
            log.warning("model %s cannot be explained (ONNX or int8): no heatmaps", classifier.version)
            self.explainer = None
        self.explain = self.explainer is not None
        # What a job's own options may need that the settings did not load (:meth:`for_options`): the
        # explainer (default: the classifier, when it is torch float32) and a face policy, each loaded
        # once, on the first job that asks, and shared by every later one.
        self._load_explainer = load_explainer
        self._load_faces = load_faces
        self._spare_lock = threading.Lock()
        self._spare_explainer: Classifier | None = None
        self._spare_faces: FacePolicy | None = None
        self.batcher = DynamicBatcher(
            classifier.predict,
            max_batch=batch_size,
            max_wait=batch_wait,
            on_batch=on_batch,
            mix=mix,
            background_batch=None if mix else 1,
            others=None if second is None else {SECOND: second.predict},
        )
        self.faces = faces
        # Read every source's C2PA manifest, XMP and EXIF declarations (None: not read).
        self.provenance = provenance
        self._face_batcher: MicroBatcher[Image.Image, list[Face]] | None = None
        self._batching = (batch_size, batch_wait, mix)
        if faces is not None:
            self._face_batcher = self._new_face_batcher(faces)
        self._memo: OrderedDict[str, Future[float]] = OrderedDict()
        self._memo_lock = threading.Lock()

    def _new_face_batcher(self, faces: FacePolicy) -> MicroBatcher[Image.Image, list[Face]]:
        batch_size, batch_wait, mix = self._batching
        return MicroBatcher(
            faces.detector.detect,
            max_batch=batch_size,
            max_wait=batch_wait,
            name="dfscan-faces",
            wrap_error=lambda exc: (
                model_error(exc, "face detector")
                if is_sticky_device_error(exc)
                else InferenceError(f"face detector fault: {type(exc).__name__}: {exc}")
            ),
            mix=mix,
            reserved=1,  # a detector thread for interactive images only (worker/inference/lanes.py)
            yield_bulk=True,
        )

    def for_options(self, options: JobOptions) -> Judge:
        """This judge as one job asked for it (dfscan/options.py): the same model, batchers, memo and
        threshold, with the job's ``explain`` and ``faces`` in place of the settings'. Every job still
        takes the one road (:meth:`judge`); only the policies it is judged under differ, and
        :attr:`version` names the faces road, so the duplicate cache never mixes modes. A job that asks
        for nothing gets this judge itself."""
        if options.default:
            return self
        twin = copy.copy(self)
        if options.explain is not None and options.explain != self.explain:
            twin.explainer = self._job_explainer() if options.explain else None
            twin.explain = twin.explainer is not None
        if options.faces is not None:
            twin.faces = self._job_faces(options.faces)
            twin._face_batcher = self._face_batcher
            if not self._limits_given:
                max_faces = twin.faces.max_faces if twin.faces is not None else 0
                twin.limits = Limits.for_policies(
                    self.sources, self.images, self.videos, max_faces, second=self.second is not None
                )
        return twin

    def _job_explainer(self) -> Classifier | None:
        """The explainer of a job that asks for heatmaps: the settings' one, or one loaded on first use
        (None, with a warning, when the checkpoint cannot be explained)."""
        if self.explainer is not None:
            return self.explainer
        with self._spare_lock:
            if self._spare_explainer is None:
                loaded = self._load_explainer() if self._load_explainer is not None else self.classifier
                if not explainable(loaded):
                    log.warning("model %s cannot be explained (ONNX or int8): no heatmaps", loaded.version)
                    return None
                self._spare_explainer = loaded
            return self._spare_explainer

    def _job_faces(self, mode: str) -> FacePolicy | None:
        """The face policy of a job's ``faces`` mode: None for off; the settings' policy in that mode;
        or, when the settings serve no faces, the detector loaded on first use (and its micro-batcher)."""
        if mode == "off":
            return None
        base = self.faces
        if base is None:
            with self._spare_lock:
                if self._spare_faces is None:
                    loaded = self._load_faces() if self._load_faces is not None else None
                    if loaded is None:
                        raise BadOptionError(
                            f"faces {mode!r} was asked for, but this judge has no face detector to use"
                        )
                    self._face_batcher = self._new_face_batcher(loaded)
                    self._spare_faces = loaded
                base = self._spare_faces
        return base if base.mode == mode else replace(base, mode=mode)

    @property
    def version(self) -> str:
        """The model version image verdicts record (and the duplicate cache is keyed on): the
        classifier's, plus ``+faces:...`` naming the face detector and its settings when faces are on,
        plus ``+second:<version>:d=<disagreement>`` with a second opinion (its score is in the verdict)."""
        version = self.classifier.version
        if self.faces is not None:
            version = f"{version}+{self.faces.version}"
        if self.second is not None:
            version = f"{version}+second:{self.second.version}:d={self.second_disagreement:g}"
        return version

    @property
    def video_version(self) -> str:
        """The model version of video verdicts: :attr:`version` plus how frames are sampled
        (``+video:frames=32:side=640`` or ``fps=...``), so the duplicate cache never answers a video
        with a verdict sampled otherwise."""
        videos = self.videos
        sampling = f"fps={videos.fps:g}" if videos.fps else f"frames={videos.frames}"
        return f"{self.version}+video:{sampling}:side={videos.frame_side}"

    @property
    def animation_version(self) -> str:
        """The model version of an animated image's verdict: :attr:`version` plus its sampling
        (``+animation:frames=32:side=640``), so a verdict of its first frame alone is never reused."""
        return f"{self.version}+animation:frames={self.videos.frames}:side={self.videos.frame_side}"

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

    def new_budget(self) -> Budget:
        """The allowance of one job judged by this Judge (:mod:`worker.inference.budget`)."""
        return Budget(self.limits, memory=self.images)

    # --- one source ------------------------------------------------------------------------------

    def judge(
        self,
        source: str,
        *,
        observe: Observe | None = None,
        similar: Similar | None = None,
        known: Known | None = None,
    ) -> Verdict:
        """Read ``source`` (an http(s) URL or a path under the allowed roots) and judge it; ``observe``
        sees every judged frame, ``similar`` and ``known`` are this source's near-duplicate and exact
        duplicate look-ups (see :meth:`judge_bytes`)."""
        budget = self.new_budget()  # the road's entrance: every stage below draws from it
        started = time.perf_counter()
        try:
            data = read_source(source, self.sources)
            budget.check("fetch")
        except Exception as exc:
            return self._failed(source, exc, fetch_ms=ms(started), media=failed_media(exc))
        return self.judge_bytes(
            data,
            source=source,
            fetch_ms=ms(started),
            budget=budget,
            observe=observe,
            similar=similar,
            known=known,
        )

    def judge_bytes(
        self,
        data: bytes,
        *,
        source: str = "<bytes>",
        fetch_ms: float = 0.0,
        budget: Budget | None = None,
        observe: Observe | None = None,
        similar: Similar | None = None,
        known: Known | None = None,
    ) -> Verdict:
        """Judge image or video bytes already read (``source`` names them in the verdict), under
        ``budget`` (a new one when None). ``observe(frame, score)``, when given, is called with every
        judged frame and its pixels (``dfscan scan --annotate`` draws them: the source is read once).
        The verdict carries the bytes' provenance (read every time, a duplicate's too: it is cheap and
        depends on no model).

        Every source is hashed from the pixels decoded for the model (PDQ; vPDQ, one PDQ per sampled frame,
        for a clip). ``similar`` (default: the Judge's) looks the hash up: an image, or a video once its
        sampled frames are hashed, that is a near-duplicate of a verdict it returns is answered with that
        verdict before any model input is spent; an animation's frames are matched once they have been
        judged (their hashes come from the same pass)."""
        budget = budget or self.new_budget()
        similar = similar or self.similar
        known = known or self.known  # the exact-bytes cache: the caller scopes it (a tenant's verdicts)
        container = video_container(data)
        verdict = self._judge_read(data, container, source, fetch_ms, budget, observe, similar, known)
        if self.provenance is None:
            return verdict
        media = VIDEO if container else IMAGE
        return replace(verdict, provenance=provenance_of(data, self.provenance, self.images, media))

    def _judge_read(
        self,
        data: bytes,
        container: str | None,
        source: str,
        fetch_ms: float,
        budget: Budget,
        observe: Observe | None,
        similar: Similar | None,
        known: Known | None,
    ) -> Verdict:
        if container is not None:
            return judge_video(self, data, container, source, fetch_ms, budget, observe, known, similar)
        return judge_image(self, data, source, fetch_ms, budget, observe, similar, known)

    def _look_up(self, hashed: MediaHash, version: str, similar: Similar | None) -> Near | None:
        """The near-duplicate look-up for a hash good enough to match (None otherwise, or without one)."""
        if similar is None:
            return None
        good = [f for f in hashed.frames if f.quality >= self.near.quality_floor]
        if not good:
            return None
        return similar(hashed, version)

    def _matched_clip(self, verdict: Verdict, hashed: list[Pdq], similar: Similar | None) -> Verdict:
        """A judged clip (video or animation) with its frames' hashes, matched once judged (vPDQ)."""
        if not verdict.done or not hashed:
            return verdict
        frames = tuple(hashed)
        verdict = replace(verdict, hashes=frame_hashes(frames))
        near = self._look_up(MediaHash(frames, video=True), verdict.model_version or self.version, similar)
        if near is not None and near.stored is not None and near.stored.fake_score is not None:
            # the earlier verdict's answer, so one clip gets one answer (its own frames stay)
            score = near.stored.fake_score
            verdict = replace(verdict, fake_score=score, label=label_for(score, self.threshold))
        return with_near(verdict, near)

    def _heatmap(self, region: Region) -> Grid:
        assert self.explainer is not None
        return heatmap(self.explainer, region.pixels)

    def _second_per_frame(
        self, frames: Iterable[ClipFrame], budget: Budget, clip: ClipSecond, priority: int
    ) -> Iterator[ClipFrame]:
        """A clip's frames, each one's whole image submitted to the second model on the way, at most the
        clip's ``in_flight`` of them waiting in the batcher (:func:`~worker.inference.signals.with_second_per_frame`)."""
        assert self.second is not None
        return with_second_per_frame(
            frames,
            budget,
            clip,
            self.second,
            lambda key, pixels: self._score(key, pixels, priority, model=SECOND),
            max_pending=self.videos.in_flight,
            timeout=MODEL_TIMEOUT_S,
        )

    def _opinion(self, first: float, second: float) -> SecondOpinion:
        assert self.second is not None
        return opinion(
            first,
            second,
            threshold=self.threshold,
            max_disagreement=self.second_disagreement,
            second_model=self.second,
        )

    def _find_faces(self, image: Image.Image, priority: int = FOREGROUND) -> list[Face]:
        """The faces of one image or frame, from the face micro-batcher (waited on)."""
        assert self._face_batcher is not None
        return self._face_batcher.submit(image, priority=priority).result(timeout=MODEL_TIMEOUT_S)

    def _score(
        self, sha: str, pixels: torch.Tensor, priority: int = FOREGROUND, *, model: str = PRIMARY
    ) -> tuple[Future[float], bool]:
        """The model's score for one region (``sha``: its memo key, the source's sha256 for a whole
        image): a future shared by every caller with the same key while it is in flight or remembered.
        Returns ``(future, True)`` for the caller that submitted it."""
        with self._memo_lock:
            future = self._memo.get(sha)
            if future is not None:
                self._memo.move_to_end(sha)
                return future, False
            future = self.batcher.submit(pixels, priority=priority, model=model)
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
        facts = {**stored_counts(stored), **facts}
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
        if stored.second_opinion is not None:
            facts["second_opinion"] = self._opinion(stored.fake_score, stored.second_opinion.fake_score)
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
        return failed(source, exc, threshold=self.threshold, model_version=self.version, **facts)


def judge_stream(
    judge: Judge | Callable[[str], Verdict], sources: Iterable[str], *, threads: int
) -> Iterator[Verdict]:
    """Judge ``sources`` on ``threads`` threads and yield one verdict per source, **in input order**
    (``judge``: a Judge, or a function of one source that calls one, e.g. to draw its picture).

    At most ``2 * threads`` sources are in flight, so memory stays bounded for any number of sources
    and the batcher always has the next images decoded. Closing the generator early waits for those
    in flight.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    run = judge.judge if isinstance(judge, Judge) else judge
    iterator = iter(sources)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dfscan-judge") as pool:
        window: deque[Future[Verdict]] = deque()
        try:
            for source in iterator:
                window.append(pool.submit(run, source))
                if len(window) >= 2 * threads:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()
