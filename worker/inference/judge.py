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
:mod:`worker.inference.regions`; this module decides where frames come from and writes the verdict.

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

import contextlib
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

from dfscan.exceptions import CorruptImageError, DfscanError, ImageTooLargeError, InferenceError
from dfscan.verdicts import (
    DONE,
    FACES,
    FAILED,
    IMAGE,
    NOT_APPLICABLE,
    VIDEO,
    FaceVerdict,
    Frame,
    Provenance,
    SecondOpinion,
    Stored,
    Verdict,
    combine,
    label_for,
)
from worker.inference.budget import Budget, Limits, rgb_bytes
from worker.inference.faces.crops import Face, FacePolicy
from worker.inference.hashing.pdq import (
    MediaHash,
    Near,
    NearPolicy,
    Pdq,
    Similar,
    frame_hashes,
    pdq_dihedral,
    pdq_of,
)
from worker.inference.images.animation import (
    AnimationFrame,
    animation_frames,
    frame_count,
    list_animation_frames,
)
from worker.inference.images.decode import (
    ImagePolicy,
    decode_in_process,
    decode_with_size,
    image_sha256,
    sniff_format,
)
from worker.inference.model.batcher import (
    BACKGROUND,
    FOREGROUND,
    PRIMARY,
    DynamicBatcher,
    MicroBatcher,
    is_sticky_device_error,
    model_error,
)
from worker.inference.model.classifier import Classifier
from worker.inference.model.explain import Grid, explainable, heatmap
from worker.inference.model.preprocess import load_pixels_hashed, to_tensor
from worker.inference.provenance import ProvenancePolicy, read_provenance
from worker.inference.regions import ClipFrame, ClipScore, Observe, Region, score_clip
from worker.inference.sources.media import video_container
from worker.inference.sources.read import SourcePolicy, failed_media, read_source
from worker.inference.video.decode import VideoInfo, VideoPolicy, open_video

log = logging.getLogger(__name__)

# ``known(sha256, model_version)``: p(fake) an earlier verdict gave the same bytes with the same model
# (a float), or what it said in full (a Stored: score or none, judged_on, faces).
Known = Callable[[str, str], "float | Stored | None"]

# The batcher's name for the second model (DFSCAN_SECOND_MODEL).
SECOND = "second"
# How long a caller waits for the model thread before its image counts as a model fault.
MODEL_TIMEOUT_S = 600.0
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
        self.limits = limits or Limits.for_policies(
            sources, images, self.videos, faces.max_faces if faces is not None else 0
        )
        # on_batch(size, seconds) after each model batch: the worker's metrics hook (the core imports none)
        # On a CPU every input costs its full forward pass: a video's frames never share an image's
        # batch there, and run one at a time, so an image arriving waits for at most one frame (on a
        # GPU a few more inputs per batch are nearly free: frames fill images' batches and batch freely).
        mix = classifier.device.type != "cpu"
        # A second opinion (DFSCAN_SECOND_MODEL): another classifier judging every still image whole,
        # fed by the same batcher (its inputs wait in the same lanes as the first model's).
        self.second = second
        self.second_disagreement = second_disagreement
        # Heatmaps for every judged region of a still image (paid only when asked for), made with
        # ``explainer``: the same checkpoint in torch float32 (the classifier itself when it is that).
        self.explainer = (explainer or classifier) if explain else None
        if self.explainer is not None and not explainable(self.explainer):
            log.warning("model %s cannot be explained (ONNX or int8): no heatmaps", classifier.version)
            self.explainer = None
        self.explain = self.explainer is not None
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
        if faces is not None:
            self._face_batcher = MicroBatcher(
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
        self._memo: OrderedDict[str, Future[float]] = OrderedDict()
        self._memo_lock = threading.Lock()

    @property
    def version(self) -> str:
        """The model version image verdicts record (and the duplicate cache is keyed on): the
        classifier's, plus ``+faces:...`` naming the face detector and its settings when faces are on,
        plus ``+second:<version>:d=<disagreement>`` with a second opinion (its score is in the verdict)."""
        if self.second is None:
            return self._clip_version
        return f"{self._clip_version}+second:{self.second.version}:d={self.second_disagreement:g}"

    @property
    def _clip_version(self) -> str:
        """What judged a clip's frames (no second opinion: only still images get one)."""
        if self.faces is None:
            return self.classifier.version
        return f"{self.classifier.version}+{self.faces.version}"

    @property
    def video_version(self) -> str:
        """The model version of video verdicts: :attr:`version` plus how frames are sampled
        (``+video:frames=32:side=640`` or ``fps=...``), so the duplicate cache never answers a video
        with a verdict sampled otherwise."""
        videos = self.videos
        sampling = f"fps={videos.fps:g}" if videos.fps else f"frames={videos.frames}"
        return f"{self._clip_version}+video:{sampling}:side={videos.frame_side}"

    @property
    def animation_version(self) -> str:
        """The model version of an animated image's verdict: :attr:`version` plus its sampling
        (``+animation:frames=32:side=640``), so a verdict of its first frame alone is never reused."""
        return f"{self._clip_version}+animation:frames={self.videos.frames}:side={self.videos.frame_side}"

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
            return self._failed(source, exc, fetch_ms=_ms(started), media=failed_media(exc))
        return self.judge_bytes(
            data,
            source=source,
            fetch_ms=_ms(started),
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
        for a clip). ``similar`` (default: the Judge's) looks the hash up: an image that is a near-duplicate
        of a verdict it returns is answered with that verdict before any model input is spent; a clip's
        frames are matched once they have been judged (their hashes come from the same pass)."""
        budget = budget or self.new_budget()
        similar = similar or self.similar
        known = known or self.known  # the exact-bytes cache: the caller scopes it (a tenant's verdicts)
        container = video_container(data)
        verdict = self._judge_read(data, container, source, fetch_ms, budget, observe, similar, known)
        if self.provenance is None:
            return verdict
        return replace(verdict, provenance=self._provenance(data, VIDEO if container else IMAGE))

    def _provenance(self, data: bytes, media: str) -> Provenance:
        """What ``data`` declares about its origin (:mod:`worker.inference.provenance`), bounded by its
        own caps (it never fails a verdict); the native C2PA reader runs in a decode child when decodes
        do."""
        assert self.provenance is not None
        isolate = None
        if self.images.decode_processes > 0:
            from worker.inference.images.decode_pool import run_isolated

            def isolate(fn: Callable[..., Provenance], *args: object) -> Provenance:
                return run_isolated(self.images, fn, *args)

        try:
            return read_provenance(data, self.provenance, media=media, isolate=isolate)
        except Exception as exc:  # a bug in reading declarations never costs the verdict
            log.error("provenance reading failed: %r", exc, exc_info=exc)
            return Provenance(error=f"unreadable: {type(exc).__name__}")

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
            hashed: list[Pdq] = []
            verdict = self._judge_video(data, container, source, fetch_ms, budget, observe, hashed, known)
            return self._matched_clip(verdict, hashed, similar)
        sha = image_sha256(data)
        facts: dict[str, object] = {"image_sha256": sha, "n_bytes": len(data), "fetch_ms": fetch_ms}
        facts["image_format"] = sniff_format(data, self.images)
        count = frame_count(data, self.images)
        version = self.version if count == 1 else self.animation_version
        # The duplicate cache keeps no heatmaps: a verdict asked to explain is judged again.
        stored = known(sha, version) if known is not None and not self.explain else None
        if stored is not None:
            return replace(self._from_stored(source, stored, **facts), model_version=version)
        started = time.perf_counter()
        kept = contextlib.ExitStack()  # the full-size image's share of the decode memory, while held
        try:
            budget.enter("decode")
            if self.faces is None and observe is None and self.second is None:
                # Decode, reduce and preprocess inside the decode memory budget (and, with
                # DFSCAN_DECODE_PROCESSES, in a child process): only the model-sized tensor (and the hash
                # of the pixels) comes back.
                pixels, (width, height), pdq, variants = load_pixels_hashed(
                    data, self.classifier.preprocess, self.images
                )
                frame = ClipFrame(0.0, (width, height), sha, pixels=pixels)
            else:  # full size: faces are cropped from the original pixels (no JPEG draft)
                image, (width, height) = self._decode_held(data, budget, kept)
                pdq, variants = pdq_dihedral(image) if count == 1 else (pdq_of(image), ())
                frame = ClipFrame(0.0, (width, height), sha, image=image)
                del image
            budget.check("decode")
        except Exception as exc:
            kept.close()
            return self._failed(source, exc, **facts, decode_ms=_ms(started))
        facts.update(width=width, height=height, decode_ms=_ms(started))
        if count > 1:
            del frame  # frame 1 passed every check of the bounded decode; the clip reads its frames
            kept.close()
            frame_pdqs: list[Pdq] = []
            sampled = _hashing(self._animation_frames(data, sha, budget), frame_pdqs)
            verdict = self._judge_clip(sampled, source, facts, budget, observe, clip=True)
            return self._matched_clip(replace(verdict, model_version=version), frame_pdqs, similar)
        facts["hashes"] = frame_hashes((pdq,))
        near = self._look_up(MediaHash((pdq,), variants), version, similar)
        if near is not None and near.stored is not None:
            kept.close()
            del frame  # answered from the earlier verdict: no model input
            answer = replace(self._from_stored(source, near.stored, **facts), cached=False)
            return _with_near(answer, near)
        frames = [frame]
        del frame  # only the road holds the image now: it is dropped once its regions are made
        verdict = self._judge_clip(self._held(frames, kept), source, facts, budget, observe, clip=False)
        return _with_near(verdict, near)

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
        return _with_near(verdict, near)

    def _decode_held(
        self, data: bytes, budget: Budget, kept: contextlib.ExitStack
    ) -> tuple[Image.Image, tuple[int, int]]:
        """The full-size decode, its RGB image counted against the job's and the process's decode memory
        from inside the decode's own reservation (never outside the budget) until ``kept`` closes."""
        stage = "face crops" if self.faces is not None else "regions"
        if self.images.decode_processes > 0:  # decoded in a child: counted as it arrives
            image, size = decode_with_size(data, self.images)
            kept.enter_context(budget.hold(rgb_bytes(image.size), stage))
            return image, size

        def keep(rgb: Image.Image) -> Image.Image:
            kept.enter_context(budget.hold(rgb_bytes(rgb.size), stage, wait=False))
            return rgb

        return decode_in_process(data, self.images, None, keep)

    def _held(self, frames: list[ClipFrame], kept: contextlib.ExitStack) -> Iterator[ClipFrame]:
        """Yield the frames of ``frames`` (emptied as it goes); once the road has made the regions of
        one, its pixels are dropped and ``kept`` (their share of the decode memory) is released."""
        try:
            while frames:
                frame = frames.pop(0)
                yield frame
                del frame
        finally:
            kept.close()

    def _animation_frames(self, data: bytes, sha: str, budget: Budget) -> Iterator[ClipFrame]:
        """The sampled frames of an animated image, sampled like a video's (count and side)."""
        videos = self.videos
        if self.images.decode_processes > 0:
            from worker.inference.images.decode_pool import run_isolated

            sampled: Iterable[AnimationFrame] = run_isolated(
                self.images, list_animation_frames, data, self.images, videos.frames, videos.frame_side
            )
        else:
            sampled = animation_frames(data, self.images, videos.frames, videos.frame_side, budget.check)
        try:
            for frame in sampled:
                with budget.hold(rgb_bytes(frame.image.size), "animation frames"):
                    yield ClipFrame(frame.t, frame.size, f"{sha}@{frame.t!r}", image=frame.image)
        except DfscanError:
            raise
        except MemoryError as exc:
            raise ImageTooLargeError(
                "animation too large: out of memory while decoding a frame", limit="decode_memory"
            ) from exc
        except Exception as exc:  # Pillow raises OSError, ValueError, EOFError, ... on a broken frame
            raise CorruptImageError(f"corrupt animation frame: {type(exc).__name__}: {exc}") from exc

    def _judge_clip(
        self,
        frames: Iterable[ClipFrame],
        source: str,
        facts: dict[str, object],
        budget: Budget,
        observe: Observe | None,
        *,
        clip: bool,
    ) -> Verdict:
        """An image (one frame) or an animated image (``clip``: sampled frames) down the region road."""
        priority = BACKGROUND if clip else FOREGROUND
        started = time.perf_counter()
        second: list[tuple[Future[float], bool]] = []  # the second model's future, and whether it was new
        if self.second is not None and not clip:
            frames = self._with_second(frames, budget, second)
        try:
            scored = score_clip(
                frames,
                self.classifier.preprocess,
                lambda region: self._score(region.key, region.pixels, priority),
                budget,
                faces=self.faces,
                find=None if self.faces is None else lambda image: self._find_faces(image, priority),
                max_in_flight=self.videos.in_flight if clip else None,
                timeout=MODEL_TIMEOUT_S,
                observe=observe,
                explain=self._heatmap if self.explain and not clip else None,
            )
            if second:
                with budget.waiting():
                    second_score = float(second[0][0].result(timeout=MODEL_TIMEOUT_S))
        except Exception as exc:
            return self._failed(source, exc, **facts, infer_ms=_ms(started))
        if self.faces is not None:
            facts["detect_ms"] = scored.detect_ms
        facts.update(_face_counts(scored))
        facts["infer_ms"] = scored.total_ms - scored.detect_ms
        if clip:  # an animated image: its frames (media "image": no duration or peak time is stored)
            facts["frames"] = _timeline(scored)
        if scored.fake_score is None:  # require, and no face: nothing was judged
            return self._not_applicable(source, **facts)
        faces = () if clip else tuple(scored.frames[0].faces)
        if self.explain and not clip:
            facts["explanation"] = tuple(scored.frames[0].heatmaps)
        if second:
            facts["second_opinion"] = self._opinion(scored.fake_score, second_score)
        return self._done(
            source,
            scored.fake_score,
            cached=scored.cached and not (second and second[0][1]),
            judged_on=FACES if scored.on_faces else IMAGE,
            faces=faces,
            **facts,  # type: ignore[arg-type]
        )

    def _with_second(
        self, frames: Iterable[ClipFrame], budget: Budget, futures: list[tuple[Future[float], bool]]
    ) -> Iterator[ClipFrame]:
        """``frames`` (one: a still image), its whole image submitted to the second model on the way
        (preprocessed as that model's checkpoint says); the future is appended to ``futures``."""
        assert self.second is not None
        for frame in frames:
            if not futures:
                if frame.image is None:
                    raise ValueError("a second opinion needs the frame's image")
                budget.take_model_inputs(1)
                pixels = to_tensor(frame.image, self.second.preprocess)
                futures.append(self._score(f"{frame.key}#second", pixels, FOREGROUND, model=SECOND))
            yield frame
            del frame

    def _heatmap(self, region: Region) -> Grid:
        assert self.explainer is not None
        return heatmap(self.explainer, region.pixels)

    def _opinion(self, first: float, second: float) -> SecondOpinion:
        assert self.second is not None
        return combine(
            first,
            second,
            threshold=self.threshold,
            max_disagreement=self.second_disagreement,
            model_version=self.second.version,
        )

    def _find_faces(self, image: Image.Image, priority: int = FOREGROUND) -> list[Face]:
        """The faces of one image or frame, from the face micro-batcher (waited on)."""
        assert self._face_batcher is not None
        return self._face_batcher.submit(image, priority=priority).result(timeout=MODEL_TIMEOUT_S)

    def _judge_video(
        self,
        data: bytes,
        container: str,
        source: str,
        fetch_ms: float,
        budget: Budget,
        observe: Observe | None,
        hashed: list[Pdq],
        known: Known | None,
    ) -> Verdict:
        """A video's verdict, under the version that names its sampling (:attr:`video_version`); its
        sampled frames' hashes are appended to ``hashed``."""
        verdict = self._video_verdict(data, container, source, fetch_ms, budget, observe, hashed, known)
        return replace(verdict, model_version=self.video_version)

    def _video_verdict(
        self,
        data: bytes,
        container: str,
        source: str,
        fetch_ms: float,
        budget: Budget,
        observe: Observe | None,
        hashed: list[Pdq],
        known: Known | None,
    ) -> Verdict:
        sha = image_sha256(data)
        facts: dict[str, object] = {
            "image_sha256": sha,
            "n_bytes": len(data),
            "fetch_ms": fetch_ms,
            "image_format": container.upper(),
            "media": VIDEO,
        }
        # The same bytes judged before with this model and sampling: its verdict and frames, no decoding.
        stored = known(sha, self.video_version) if known is not None else None
        if isinstance(stored, Stored) and stored.media == VIDEO:
            facts.update(duration_s=stored.duration_s, peak_t=stored.peak_t, frames=stored.frames)
            return self._from_stored(source, stored, **facts)
        opened: list[VideoInfo] = []

        def frames() -> Iterator[ClipFrame]:
            # The deadline is the job's budget: it counts decoding, not waiting for the model or detector.
            with open_video(data, self.videos, check=budget.check) as video:
                opened.append(video.info)
                for sampled in video.frames:
                    image = sampled.image
                    with budget.hold(rgb_bytes(image.size), "video frames"):
                        yield ClipFrame(
                            sampled.t, sampled.size or image.size, f"{sha}@{sampled.t!r}", image=image
                        )
                    del sampled, image

        started = time.perf_counter()
        try:
            budget.enter("video decode")
            scored = score_clip(
                _hashing(frames(), hashed),
                self.classifier.preprocess,
                # behind images: a video never starves the images queued after it
                lambda region: self._score(region.key, region.pixels, BACKGROUND),
                budget,
                faces=self.faces,
                find=None if self.faces is None else lambda image: self._find_faces(image, BACKGROUND),
                max_in_flight=self.videos.in_flight,
                timeout=MODEL_TIMEOUT_S,
                observe=observe,
            )
        except Exception as exc:
            return self._failed(source, exc, **facts, decode_ms=_ms(started))
        info = opened[0]
        facts.update(
            width=info.width,
            height=info.height,
            decode_ms=scored.total_ms - scored.wait_ms - scored.detect_ms,
            detect_ms=scored.detect_ms,
            infer_ms=scored.wait_ms,
            duration_s=info.duration_s,
            frames=_timeline(scored),
            **_face_counts(scored),
        )
        if scored.fake_score is None:  # require, and no face in any frame: nothing was judged
            return self._not_applicable(source, **facts)
        return self._done(
            source,
            scored.fake_score,
            cached=scored.cached,
            judged_on=FACES if scored.on_faces else IMAGE,
            peak_t=scored.peak_t,
            **facts,  # type: ignore[arg-type]
        )

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
        facts = {**_stored_counts(stored), **facts}
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


def _hashing(frames: Iterable[ClipFrame], hashed: list[Pdq]) -> Iterator[ClipFrame]:
    """Pass ``frames`` on, appending each frame's PDQ hash (from its pixels, at its time) to ``hashed``."""
    for frame in frames:
        if frame.image is not None:
            hashed.append(pdq_of(frame.image, frame.t))
        yield frame
        del frame


def _with_near(verdict: Verdict, near: Near | None) -> Verdict:
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


def _timeline(scored: ClipScore) -> tuple[Frame, ...]:
    return tuple(Frame(t=f.t, fake_score=f.fake_score, faces=tuple(f.faces)) for f in scored.frames)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _face_counts(scored: ClipScore) -> dict[str, object]:
    """A verdict's face counts (found, judged, skipped by reason) over every frame; none with faces off."""
    counts = scored.face_counts
    if counts is None:
        return {}
    return {"faces_found": counts.found, "faces_judged": counts.judged, "faces_skipped": dict(counts.skipped)}


def _stored_counts(stored: Stored) -> dict[str, object]:
    """The duplicate cache's face counts (absent when faces were off or for verdicts stored without them)."""
    if stored.faces_found is None:
        return {}
    return {
        "faces_found": stored.faces_found,
        "faces_judged": stored.faces_judged,
        "faces_skipped": dict(stored.faces_skipped or {}),
    }
