"""Score labelled images with a deployed checkpoint, exactly as serving does, and compute its metrics.

Backs ``dfscan evaluate --model M --data D``: ``M`` is any checkpoint ``load_detector`` accepts (a local
``save_pretrained`` folder or a public hub id), ``D`` any layout ``worker.training.data`` reads. Images
go through the serving path (``load_pixels``: decode, JPEG draft, the checkpoint's preprocessing) and
``Detector.predict``, so the numbers describe what production would answer. An image that fails to
decode is skipped and counted in ``skipped``, not fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from dfscan.exceptions import DfscanError, TrainingDataError
from worker.inference.images import ImagePolicy
from worker.inference.model import load_detector
from worker.inference.preprocess import load_pixels
from worker.training.data import Example
from worker.training.metrics import evaluate_scores

log = logging.getLogger(__name__)


def score_examples(
    ref: str,
    examples: Sequence[Example],
    *,
    batch_size: int = 32,
    device: str = "auto",
    revision: str | None = None,
    policy: ImagePolicy | None = None,
) -> tuple[list[int], list[float], list[str], str]:
    """p(fake) for each decodable example: ``(labels, scores, skipped names, model version)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    detector = load_detector(ref, revision=revision, device=device)
    policy = policy or ImagePolicy()
    labels: list[int] = []
    scores: list[float] = []
    skipped: list[str] = []
    batch: list[torch.Tensor] = []
    batch_labels: list[int] = []

    def flush() -> None:
        if batch:
            scores.extend(detector.predict(torch.stack(batch)))
            labels.extend(batch_labels)
            batch.clear()
            batch_labels.clear()

    for example in examples:
        try:
            pixels, _ = load_pixels(example.read(), detector.preprocess, policy)
        except (DfscanError, OSError) as exc:
            log.warning("skipping %s: %s", example.name, exc)
            skipped.append(example.name)
            continue
        batch.append(pixels)
        batch_labels.append(example.label)
        if len(batch) >= batch_size:
            flush()
    flush()
    return labels, scores, skipped, detector.version


def evaluate_model(
    ref: str,
    data_split: Sequence[Example],
    *,
    batch_size: int = 32,
    target_fpr: float = 0.05,
    threshold: float = 0.5,
    device: str = "auto",
    revision: str | None = None,
) -> dict[str, Any]:
    """``evaluate_scores`` of ``ref`` on ``data_split``, plus ``model_version`` and ``skipped`` (count and names)."""
    labels, scores, skipped, version = score_examples(
        ref, data_split, batch_size=batch_size, device=device, revision=revision
    )
    if not labels:
        raise TrainingDataError(f"none of the {len(data_split)} images could be decoded; nothing to evaluate")
    metrics = evaluate_scores(labels, scores, threshold=threshold, target_fpr=target_fpr)
    metrics["model_version"] = version
    metrics["skipped"] = len(skipped)
    metrics["skipped_examples"] = skipped[:10]
    log.info(
        "evaluated %s on %d images: accuracy %.4f, ROC-AUC %s (%d skipped)",
        ref,
        metrics["n"],
        metrics["accuracy"],
        metrics["roc_auc"],
        len(skipped),
    )
    return metrics
