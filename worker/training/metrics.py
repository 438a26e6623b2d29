"""Score a Real/Fake classifier from labels and p(fake): numpy only, no scikit-learn.

Conventions (every number in a report follows them):

- Labels are ``0 = Real``, ``1 = Fake``; Fake is the positive class. A sample is predicted Fake when
  ``p_fake >= threshold``.
- The confusion matrix is ``[[TN, FP], [FN, TP]]``: **rows are the true class** (Real, Fake), **columns
  the predicted class** (Real, Fake). ``FP`` is a real image called fake.
- Precision, recall or F1 whose denominator is zero are reported as 0.0 (scikit-learn's default).
- Ranking metrics that need both classes (ROC-AUC, EER) or one of them (average precision needs a fake,
  the threshold at a target FPR needs a real image) are ``None`` when that class is absent, never NaN,
  so the dict stays valid JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dfscan.exceptions import TrainingDataError

Labels = Sequence[int] | npt.NDArray[np.integer[Any]]
Scores = Sequence[float] | npt.NDArray[np.floating[Any]]

CLASS_NAMES = ("Real", "Fake")  # index = label
CONFUSION_LAYOUT = (
    "rows = true class (Real, Fake), columns = predicted class (Real, Fake): [[TN, FP], [FN, TP]]"
)


def _arrays(y_true: Labels, p_fake: Scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(p_fake, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} labels but p_fake has {p.size} scores; they must pair up")
    if y.size == 0:
        raise TrainingDataError("no samples to evaluate: the split is empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (Real) or 1 (Fake), got {sorted(set(y.tolist()))}")
    if not np.isfinite(p).all():
        raise ValueError("p_fake contains NaN or infinite scores")
    return y, p


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def roc_curve(y_true: Labels, p_fake: Scores) -> dict[str, list[float]]:
    """ROC points at every distinct score, highest first, starting at (0, 0) with threshold +inf.

    ``fpr[i]``/``tpr[i]`` are the rates when predicting Fake for ``p_fake >= thresholds[i]``. Rates of
    an absent class are 0.0 throughout.
    """
    y, p = _arrays(y_true, p_fake)
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    # the last index of each run of equal scores: ties move together
    last = np.r_[np.nonzero(np.diff(p_sorted))[0], p_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    tpr = tps / n_pos if n_pos else np.zeros_like(tps, dtype=np.float64)
    fpr = fps / n_neg if n_neg else np.zeros_like(fps, dtype=np.float64)
    return {
        "fpr": [0.0, *map(float, fpr)],
        "tpr": [0.0, *map(float, tpr)],
        "thresholds": [float("inf"), *map(float, p_sorted[last])],
    }


def roc_auc(y_true: Labels, p_fake: Scores) -> float | None:
    """Area under the ROC curve as the Mann-Whitney U statistic (a tie counts one half); None if one class."""
    y, p = _arrays(y_true, p_fake)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size, dtype=np.float64)
    p_sorted = p[order]
    start = 0
    for end in np.r_[np.nonzero(np.diff(p_sorted))[0] + 1, p.size]:  # average ranks over ties
        ranks[order[start:end]] = (start + 1 + end) / 2.0
        start = end
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(y_true: Labels, p_fake: Scores) -> float | None:
    """Step-wise AP like scikit-learn: sum over distinct thresholds of (R_n - R_{n-1}) * P_n; None if no fakes."""
    y, p = _arrays(y_true, p_fake)
    if y.sum() == 0:
        return None
    curve = roc_curve(y, p)
    tpr = np.asarray(curve["tpr"][1:])
    fpr = np.asarray(curve["fpr"][1:])
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    tps, fps = tpr * n_pos, fpr * n_neg
    precision = tps / (tps + fps)
    recall_steps = np.diff(np.r_[0.0, tpr])
    return float((recall_steps * precision).sum())


def equal_error_rate(y_true: Labels, p_fake: Scores) -> tuple[float, float] | None:
    """``(eer, threshold)``: at the ROC point where FPR and FNR are closest, eer = (FPR + FNR) / 2.

    Ties between points go to the higher threshold. None when either class is absent.
    """
    y, p = _arrays(y_true, p_fake)
    if y.sum() == 0 or y.sum() == y.size:
        return None
    curve = roc_curve(y, p)
    fpr, fnr = np.asarray(curve["fpr"]), 1.0 - np.asarray(curve["tpr"])
    i = int(np.argmin(np.abs(fpr - fnr)))  # argmin takes the first: the highest threshold
    return float((fpr[i] + fnr[i]) / 2.0), float(curve["thresholds"][i])


def threshold_at_fpr(y_true: Labels, p_fake: Scores, target_fpr: float) -> dict[str, float] | None:
    """The lowest threshold (a score value) whose FPR on real images is <= target_fpr, with its FPR and TPR.

    When even the highest score belongs to a real image above the budget, the threshold is just above
    the highest score (nothing is called fake). None when there are no real images.
    """
    y, p = _arrays(y_true, p_fake)
    if y.sum() == y.size:
        return None
    curve = roc_curve(y, p)
    ok = [i for i, f in enumerate(curve["fpr"]) if f <= target_fpr]
    i = ok[-1]  # fpr grows as the threshold falls, so the last allowed point has the lowest threshold
    threshold = curve["thresholds"][i]
    if i == 0:
        threshold = float(np.nextafter(max(curve["thresholds"][1:]), np.inf))
    return {"threshold": float(threshold), "fpr": curve["fpr"][i], "tpr": curve["tpr"][i]}


def evaluate_scores(
    y_true: Labels,
    p_fake: Scores,
    *,
    threshold: float = 0.5,
    target_fpr: float = 0.05,
) -> dict[str, Any]:
    """Every number dfscan reports for a split, as a JSON-ready dict (see the module doc for conventions)."""
    y, p = _arrays(y_true, p_fake)
    pred = (p >= threshold).astype(np.int64)
    tn = int(((y == 0) & (pred == 0)).sum())
    fp = int(((y == 0) & (pred == 1)).sum())
    fn = int(((y == 1) & (pred == 0)).sum())
    tp = int(((y == 1) & (pred == 1)).sum())

    per_class: dict[str, dict[str, float]] = {}
    for name, correct, false_pos, false_neg in (("Real", tn, fn, fp), ("Fake", tp, fp, fn)):
        precision = _div(correct, correct + false_pos)
        recall = _div(correct, correct + false_neg)
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _div(2 * precision * recall, precision + recall),
            "support": correct + false_neg,
        }
    total = y.size
    keys = ("precision", "recall", "f1")
    macro = {k: float(np.mean([per_class[c][k] for c in CLASS_NAMES])) for k in keys}
    weighted = {k: sum(per_class[c][k] * per_class[c]["support"] for c in CLASS_NAMES) / total for k in keys}
    eer = equal_error_rate(y, p)
    at_fpr = threshold_at_fpr(y, p, target_fpr)
    return {
        "n": int(total),
        "threshold": float(threshold),
        "accuracy": (tn + tp) / total,
        "per_class": per_class,
        "macro_avg": {**macro, "support": int(total)},
        "weighted_avg": {**weighted, "support": int(total)},
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "confusion_matrix_layout": CONFUSION_LAYOUT,
        "roc_auc": roc_auc(y, p),
        "average_precision": average_precision(y, p),
        "eer": None if eer is None else eer[0],
        "eer_threshold": None if eer is None else eer[1],
        "target_fpr": float(target_fpr),
        "threshold_at_fpr": None if at_fpr is None else at_fpr["threshold"],
        "fpr_at_threshold": None if at_fpr is None else at_fpr["fpr"],
        "tpr_at_fpr": None if at_fpr is None else at_fpr["tpr"],
    }
