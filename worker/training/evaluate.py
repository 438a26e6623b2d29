"""Score labelled images with a deployed checkpoint, exactly as serving does, and compute its metrics.

Backs ``dfscan evaluate --model M --data D``: ``M`` is any checkpoint ``load_classifier`` accepts (a local
``save_pretrained`` folder or a public hub id), ``D`` any layout ``worker.training.data`` reads. The
detector and the Judge are built by :mod:`worker.inference.factory` from the settings (``DFSCAN_*``: the
runtime, decode caps and memory, JPEG draft, batch wait), so images go through the serving road
(``Judge.judge_bytes``: the same decode, regions, preprocessing and batched model as `dfscan scan` and the
worker) and the numbers describe what production would answer. An image that fails to decode is
skipped and counted in ``skipped``, not fatal.

The face policy comes from the same factory as serving (``DFSCAN_FACES``, detector, margin, face limits,
and for a registered version trained on faces its recorded detector and margin), so a threshold
measured here is measured on the road it is applied on (:func:`calibrate`, :func:`road_mismatch`). Under
``require`` images without a face (``not_applicable``) are counted in ``no_face`` and skipped; under
``auto`` they are judged whole, as serving judges them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dfscan.calibration import serving_faces
from dfscan.exceptions import InferenceError, SourceNotFoundError, TrainingDataError
from dfscan.settings import Settings
from dfscan.verdicts import NOT_APPLICABLE, Verdict
from worker.inference.faces.crops import FacePolicy
from worker.inference.factory import face_policy, new_classifier, new_judge
from worker.inference.model.classifier import Classifier
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
    """p(fake) for each decodable example on the whole image: ``(labels, scores, skipped names, version)``.

    Every example goes through :meth:`Judge.judge_bytes`, the road `dfscan scan` and the worker take,
    with faces off (DFSCAN_FACES=off)."""
    settings = (settings or Settings()).model_copy(update={"faces": "off"})
    scored = score_on_road(
        ref,
        examples,
        batch_size=batch_size,
        device=device,
        revision=revision,
        settings=settings,
        threads=threads,
    )
    return scored.labels, scored.scores, scored.skipped, scored.version


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
    """Like :func:`score_examples`, on faces when ``faces`` is given, as serving judges under
    DFSCAN_FACES=require with those crop settings: ``(labels, scores, skipped names, names without a
    face, model version)``; the version then names the face detector and its settings."""
    settings = settings or Settings()
    settings = (
        _on_faces(settings, faces) if faces is not None else settings.model_copy(update={"faces": "off"})
    )
    scored = score_on_road(
        ref,
        examples,
        batch_size=batch_size,
        device=device,
        revision=revision,
        settings=settings,
        threads=threads,
    )
    return scored.labels, scored.scores, scored.skipped, scored.no_face, scored.version


@dataclass(frozen=True)
class Scored:
    """What :func:`score_on_road` measured: a label and p(fake) per judged example, the examples not
    judged (undecodable: ``skipped``; ``require`` and no face: ``no_face``), the judge's version (the
    model's, plus the faces settings when on) and the road (:func:`road_of`)."""

    labels: list[int]
    scores: list[float]
    skipped: list[str]
    no_face: list[str]
    version: str
    road: dict[str, Any]


def road_of(
    settings: Settings,
    policy: FacePolicy | None,
    detector: Classifier,
    trained_on: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The serving road a threshold is measured on, as recorded in reports and the registry: the faces
    mode (``off`` without a policy), its detector (name and version), margin, face-size floor, cap and
    minimum score, and the model runtime setting, int8, device and precision (resolved: fp32, bf16 or
    fp16) the checkpoint was loaded with."""
    model = {
        "runtime": settings.runtime,
        "int8": settings.int8,
        "device": str(detector.device),
        "precision": getattr(detector, "precision", "fp32"),  # as resolved on that device
    }
    if policy is None:
        return {"faces": "off", **model}
    return {
        **serving_faces(settings, trained_on),
        "detector_version": policy.detector.version,
        "min_face_px": policy.min_face_px,
        "max_faces": policy.max_faces,
        "min_face_score": policy.min_score,
        **model,
    }


# What the serving road does beside the first model's score, switched off where only the score is wanted.
_SCORE_ONLY: dict[str, Any] = {"second_model": None, "explain": False, "provenance": False}


def score_on_road(
    ref: str,
    examples: Sequence[Example],
    *,
    trained_on: dict[str, Any] | None = None,
    batch_size: int = 32,
    device: str = "auto",
    revision: str | None = None,
    settings: Settings | None = None,
    threads: int = 2,
) -> Scored:
    """Judge ``examples`` exactly as serving would judge them with ``settings`` (default: the process's,
    ``DFSCAN_*``): the detector from :func:`~worker.inference.factory.new_classifier`, the face policy
    from :func:`~worker.inference.factory.face_policy` (``trained_on``: the version's registry
    ``params["faces"]``, as a worker serving that version passes it) and the Judge from
    :func:`~worker.inference.factory.new_judge`. ``device`` overrides the settings' device."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    settings = settings or Settings()
    if device != "auto":
        settings = settings.model_copy(update={"device": device})
    # The signals beside a score (a second model, heatmaps, provenance) never change it: measuring a
    # threshold pays for none of them (a second model would be one more model input per example).
    settings = settings.model_copy(update=_SCORE_ONLY)
    detector = new_classifier(settings, model=ref, revision=revision)
    policy = face_policy(settings, detector, trained_on=trained_on)
    judge = new_judge(settings, detector, batch_size=batch_size, faces=policy)
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
    return Scored(
        labels, scores, skipped, no_face, judge.version, road_of(settings, policy, detector, trained_on)
    )


def calibrate(
    ref: str,
    examples: Sequence[Example],
    *,
    split: str,
    target_fpr: float,
    trained_on: dict[str, Any] | None = None,
    settings: Settings | None = None,
    batch_size: int = 32,
    device: str = "auto",
) -> tuple[float | None, dict[str, Any]]:
    """The threshold serving should use for ``ref``: the lowest with FPR <= ``target_fpr`` on
    ``examples`` judged on the serving road (:func:`score_on_road`), and the calibration record the
    registry keeps beside it (the road, the judge's version, the split, counts and the threshold)."""
    scored = score_on_road(
        ref, examples, trained_on=trained_on, settings=settings, batch_size=batch_size, device=device
    )
    if not scored.labels:
        raise TrainingDataError(f"no {split} image could be judged on the serving road; nothing to calibrate")
    metrics = evaluate_scores(scored.labels, scored.scores, target_fpr=target_fpr)
    threshold = metrics.get("threshold_at_fpr")
    record = {
        **scored.road,
        "judge_version": scored.version,
        "split": split,
        "n": metrics["n"],
        "skipped": len(scored.skipped),
        "no_face": len(scored.no_face),
        "target_fpr": target_fpr,
        "threshold": threshold,
        "fpr_at_threshold": metrics.get("fpr_at_threshold"),
        "tpr_at_fpr": metrics.get("tpr_at_fpr"),
        "roc_auc": metrics.get("roc_auc"),
    }
    return threshold, record


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
    trained_on: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """``evaluate_scores`` of ``ref`` on ``data_split``, plus ``model_version``, ``road`` (what it was
    judged on, :func:`road_of`), ``skipped`` and ``no_face`` (counts and names), and ``y_true`` and
    ``p_fake`` (for the report's pictures). Judged on the serving road of ``settings``; ``faces``
    forces face crops with those settings under ``require`` (``dfscan evaluate --faces require``)."""
    settings = settings or Settings()
    if faces is not None:
        settings = _on_faces(settings, faces)
    scored = score_on_road(
        ref,
        data_split,
        trained_on=trained_on,
        batch_size=batch_size,
        device=device,
        revision=revision,
        settings=settings,
    )
    if not scored.labels:
        raise TrainingDataError(
            f"none of the {len(data_split)} images could be decoded"
            + (f" or showed a face ({len(scored.no_face)} without one)" if scored.no_face else "")
            + "; nothing to evaluate"
        )
    metrics = evaluate_scores(scored.labels, scored.scores, threshold=threshold, target_fpr=target_fpr)
    metrics["model_version"] = scored.version
    metrics["road"] = scored.road
    metrics["skipped"] = len(scored.skipped)
    metrics["skipped_examples"] = scored.skipped[:10]
    metrics["no_face"] = len(scored.no_face)
    metrics["no_face_examples"] = scored.no_face[:10]
    metrics["y_true"] = scored.labels
    metrics["p_fake"] = scored.scores
    log.info(
        "evaluated %s on %d images: accuracy %.4f, ROC-AUC %s (%d skipped)",
        ref,
        metrics["n"],
        metrics["accuracy"],
        metrics["roc_auc"],
        len(scored.skipped),
    )
    return metrics


def _on_faces(settings: Settings, faces: FaceCropConfig) -> Settings:
    """``settings`` judging face crops only (``DFSCAN_FACES=require``) with ``faces``' crop settings."""
    return settings.model_copy(
        update={
            "faces": "require",
            "face_margin": faces.margin,
            "max_faces": faces.max_faces,
            "min_face_px": faces.min_face_px,
            "min_face_score": faces.min_score,
            "face_detector": faces.detector,
        }
    )
