"""Score labelled images with a deployed checkpoint, exactly as serving does, and compute its metrics.

Backs ``dfscan evaluate --model M --data D``: ``M`` is any checkpoint ``load_classifier`` accepts (a local
``save_pretrained`` folder or a public hub id), ``D`` any layout ``worker.training.data`` reads. The
detector and the Judge are built by :mod:`worker.inference.factory` from the settings (``DFSCAN_*``: the
runtime, decode caps and memory, JPEG draft, batch wait), so images go through the serving road
(``Judge.judge_bytes``: the same decode, regions, preprocessing and batched model as `dfscan scan` and the
worker) and the numbers describe what production would answer. An image that fails to decode is
skipped and counted in ``skipped``, not fatal.

With ``faces`` (``dfscan evaluate --faces``) the Judge judges on faces as serving does with
``DFSCAN_FACES=require``: the serving detector and margin, every chosen face scored, the image's score
their maximum. Images without a face (``not_applicable``) are counted in ``no_face`` and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dfscan.exceptions import InferenceError, SourceNotFoundError, TrainingDataError
from dfscan.settings import Settings
from dfscan.verdicts import NOT_APPLICABLE, Verdict
from worker.inference.faces.crops import FacePolicy, load_face_detector
from worker.inference.factory import default_threads, new_classifier, new_judge
from worker.training.data import Example
from worker.training.faces import FaceCropConfig
from worker.training.metrics import evaluate_scores

log = logging.getLogger(__name__)


def score_examples(
    ref: str,
    examples: Sequence[Example],
    *,
    batch_size: int = 32,
    device: str = "auto",
    revision: str | None = None,
    settings: Settings | None = None,
    threads: int = 2,
) -> tuple[list[int], list[float], list[str], str]:
    """p(fake) for each decodable example: ``(labels, scores, skipped names, model version)``.

    Every example goes through :meth:`Judge.judge_bytes`, the road `dfscan scan` and the worker take.
    """
    labels, scores, skipped, _, version = score_face_examples(
        ref,
        examples,
        None,
        batch_size=batch_size,
        device=device,
        revision=revision,
        settings=settings,
        threads=threads,
    )
    return labels, scores, skipped, version


def score_face_examples(
    ref: str,
    examples: Sequence[Example],
    faces: FaceCropConfig | None,
    *,
    batch_size: int = 32,
    device: str = "auto",
    revision: str | None = None,
    settings: Settings | None = None,
    threads: int = 2,
) -> tuple[list[int], list[float], list[str], list[str], str]:
    """Like :func:`score_examples`, on faces when ``faces`` is given: ``(labels, scores, skipped names,
    names without a face, model version)``; the version then names the face detector and its settings.

    ``settings`` (default: the process's, ``DFSCAN_*``) are the serving settings the detector and the
    Judge are built with; ``device`` overrides its device (``auto``: the settings')."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    settings = settings or Settings()
    if device != "auto":
        settings = settings.model_copy(update={"device": device})
    detector = new_classifier(settings, model=ref, revision=revision)
    face_policy = None
    if faces is not None:  # judged on faces as serving does under DFSCAN_FACES=require
        face_policy = FacePolicy(
            "require",
            load_face_detector(faces.detector, detector.device, default_threads(settings)),
            margin=faces.margin,
            max_faces=faces.max_faces,
            min_face_px=faces.min_face_px,
        )
    judge = new_judge(settings, detector, batch_size=batch_size, faces=face_policy)
    labels: list[int] = []
    scores: list[float] = []
    skipped: list[str] = []
    no_face: list[str] = []

    def one(example: Example) -> Verdict:
        try:
            data = example.read()
        except OSError as exc:
            return Verdict(
                source=example.name, status="failed", error_code=SourceNotFoundError.code, error=str(exc)
            )
        return judge.judge_bytes(data, source=example.name)

    try:
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="dfscan-evaluate") as pool:
            for example, verdict in zip(examples, pool.map(one, examples), strict=True):
                if verdict.error_code == InferenceError.code:
                    raise InferenceError(f"model fault on {example.name}: {verdict.error}")
                if verdict.label == NOT_APPLICABLE:
                    no_face.append(example.name)
                    continue
                if not verdict.done or verdict.fake_score is None:
                    log.warning("skipping %s: %s %s", example.name, verdict.error_code, verdict.error)
                    skipped.append(example.name)
                    continue
                labels.append(example.label)
                scores.append(verdict.fake_score)
    finally:
        judge.close()
    return labels, scores, skipped, no_face, judge.version


def evaluate_model(
    ref: str,
    data_split: Sequence[Example],
    *,
    batch_size: int = 32,
    target_fpr: float = 0.05,
    threshold: float = 0.5,
    device: str = "auto",
    revision: str | None = None,
    faces: FaceCropConfig | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """``evaluate_scores`` of ``ref`` on ``data_split``, plus ``model_version`` and ``skipped`` (count and
    names); with ``faces``, judged on face crops, and ``no_face`` (count and names) too."""
    labels, scores, skipped, no_face, version = score_face_examples(
        ref, data_split, faces, batch_size=batch_size, device=device, revision=revision, settings=settings
    )
    if not labels:
        raise TrainingDataError(
            f"none of the {len(data_split)} images could be decoded"
            + (f" or showed a face ({len(no_face)} without one)" if faces is not None else "")
            + "; nothing to evaluate"
        )
    metrics = evaluate_scores(labels, scores, threshold=threshold, target_fpr=target_fpr)
    metrics["model_version"] = version
    metrics["skipped"] = len(skipped)
    metrics["skipped_examples"] = skipped[:10]
    if faces is not None:
        metrics["no_face"] = len(no_face)
        metrics["no_face_examples"] = no_face[:10]
    log.info(
        "evaluated %s on %d images: accuracy %.4f, ROC-AUC %s (%d skipped)",
        ref,
        metrics["n"],
        metrics["accuracy"],
        metrics["roc_auc"],
        len(skipped),
    )
    return metrics
