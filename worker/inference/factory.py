"""Build the core's objects from settings: `dfscan scan`, the worker and `dfscan evaluate` all load their
detector with :func:`new_classifier` and their Judge with :func:`new_judge`, so the three judge every source
under the same policies (sources, decode caps and memory, video sampling, faces, the per-job budget)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dfscan.calibration import serving_faces
from dfscan.settings import Settings
from dfscan.uploads import new_store
from worker.inference.faces.crops import FacePolicy, load_face_detector
from worker.inference.hashing.pdq import NearPolicy, Similar
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge, Known
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.model.explain import explainable
from worker.inference.provenance import ProvenancePolicy
from worker.inference.sources.read import SourcePolicy
from worker.inference.video.decode import VideoPolicy


def source_policy(settings: Settings, *, extra_roots: Sequence[Path] = ()) -> SourcePolicy:
    """What may be read: URLs under the SSRF guard, paths under ``DFSCAN_ALLOWED_ROOTS`` (plus
    ``extra_roots``: `dfscan scan` allows exactly what the user named)."""
    roots = tuple(Path(root) for root in settings.allowed_roots)
    policy = SourcePolicy(
        allowed_roots=roots,
        url_allowlist=settings.url_allowlist,
        max_bytes=settings.max_bytes,
        max_video_bytes=settings.max_video_bytes,
        connect_timeout=settings.fixed("connect_timeout"),
        read_timeout=settings.fixed("read_timeout"),
        deadline=settings.fetch_deadline,
        max_redirects=settings.max_redirects,
        uploads=new_store(settings.upload_store),
    )
    if extra_roots:
        policy = replace(policy, allowed_roots=tuple(dict.fromkeys((*roots, *extra_roots))))
    return policy


def image_policy(settings: Settings) -> ImagePolicy:
    return ImagePolicy(
        max_pixels=settings.max_pixels,
        max_frames=settings.max_frames,
        decode_memory=settings.decode_memory,
        decode_processes=settings.decode_processes,
        decode_timeout=settings.fixed("decode_timeout"),
        previews=settings.previews,
    )


def video_policy(settings: Settings) -> VideoPolicy:
    return VideoPolicy(
        max_bytes=settings.max_video_bytes,
        max_seconds=settings.max_video_seconds,
        max_frame_pixels=settings.fixed("max_video_pixels"),
        frames=settings.video_frames,
        fps=settings.video_fps,
        deadline_s=settings.fixed("video_deadline"),
        in_flight=settings.fixed("video_in_flight"),
    )


def default_threads(settings: Settings) -> int:
    """torch threads for this process: the setting, else every core (one model thread per process)."""
    return settings.threads or max(1, os.cpu_count() or 1)


def new_classifier(
    settings: Settings, *, model: str | None = None, revision: str | None = None
) -> Classifier:
    """Load ``model`` (default ``DFSCAN_MODEL`` at ``DFSCAN_MODEL_REVISION``) as the settings say."""
    return load_classifier(
        model or settings.model,
        revision=revision if model else settings.model_revision,
        device=settings.device,
        int8=settings.int8,
        threads=default_threads(settings),
        runtime=settings.runtime,
        onnx_cache=settings.onnx_cache,
        precision=settings.precision,
        share_cache_across_precision=settings.share_cache_across_precision,
    )


def new_judge(
    settings: Settings,
    detector: Classifier,
    *,
    threshold: float | None = None,
    batch_size: int | None = None,
    extra_roots: Sequence[Path] = (),
    known: Known | None = None,
    faces: FacePolicy | None | str = "settings",
    on_batch: Callable[[int, float], None] | None = None,
    similar: Similar | None = None,
) -> Judge:
    """A :class:`Judge` for ``detector`` under the settings' source, image and face policies
    (``faces``: a FacePolicy or None to override ``DFSCAN_FACES``)."""
    return Judge(
        detector,
        sources=source_policy(settings, extra_roots=extra_roots),
        images=image_policy(settings),
        videos=video_policy(settings),
        threshold=settings.threshold if threshold is None else threshold,
        batch_size=batch_size or settings.batch_size,
        batch_wait=settings.batch_wait_ms / 1000,
        known=known,
        faces=face_policy(settings, detector) if faces == "settings" else faces,  # type: ignore[arg-type]
        on_batch=on_batch,
        provenance=ProvenancePolicy() if settings.provenance else None,
        second=new_classifier(settings, model=settings.second_model) if settings.second_model else None,
        second_disagreement=settings.second_disagreement,
        explain=settings.explain,
        explainer=_explainer(settings, detector) if settings.explain else None,
        similar=similar,
        near=near_policy(settings),
        # A job's own options (dfscan/options.py) may ask for what the settings did not load.
        load_explainer=lambda: _explainer(settings, detector),
        load_faces=lambda: face_policy(_faces_on(settings), detector),
    )


def _faces_on(settings: Settings) -> Settings:
    """The settings with faces on (auto): for a job that asks for faces when DFSCAN_FACES is off."""
    return settings if settings.faces != "off" else settings.model_copy(update={"faces": "auto"})


def near_policy(settings: Settings) -> NearPolicy:
    """How sources are matched (docs/near-duplicates.md): distance, quality floor, vPDQ frame share."""
    return NearPolicy(
        distance=settings.near_distance,
        quality_floor=settings.hash_quality_floor,
        video_percent=settings.video_match_percent,
    )


def _explainer(settings: Settings, detector: Classifier) -> Classifier:
    """The checkpoint of ``detector`` as heatmaps need it: torch, float32 (``detector`` itself when it is
    that; else, e.g. served by ONNX Runtime or int8, a second copy is loaded, only when explaining)."""
    if explainable(detector):
        return detector
    return load_classifier(
        detector.source,
        revision=settings.model_revision if detector.source == settings.model else None,
        device=settings.device,
        threads=default_threads(settings),
        runtime="torch",
    )


def face_policy(
    settings: Settings, detector: Classifier, *, trained_on: dict[str, Any] | None = None
) -> FacePolicy | None:
    """The face policy of ``DFSCAN_FACES`` (None when off), its detector loaded on the model's device.

    ``trained_on``: a registry version's ``params["faces"]`` (it was trained on face crops): it is then
    served on faces with the detector and margin it was trained with, even when DFSCAN_FACES is off."""
    road = serving_faces(settings, trained_on)
    if road["faces"] == "off":
        return None
    mode, name, margin = road["faces"], road["detector"], road["margin"]
    return FacePolicy(
        mode,
        load_face_detector(name, detector.device, default_threads(settings)),
        margin=margin,
        max_faces=settings.max_faces,
        min_face_px=settings.min_face_px,
        min_score=settings.min_face_score,
    )
