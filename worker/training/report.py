"""Write an evaluation report: ``report.json``, ``classification_report.txt``, ``confusion_matrix.png``, ``roc.png``.

The text report has the layout of scikit-learn's ``classification_report`` (what the seed model's card
shows). The confusion matrix picture labels its axes, rows = true class and columns = predicted class,
so nobody has to guess which corner is a false positive.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dfscan.exceptions import ConfigError
from worker.training.metrics import CLASS_NAMES, roc_curve

log = logging.getLogger(__name__)


def format_classification_report(metrics: dict[str, Any], digits: int = 4) -> str:
    """The per-class table of ``evaluate_scores`` output, formatted like scikit-learn's report."""
    width = 12
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [head, ""]

    def row(name: str, m: dict[str, Any]) -> str:
        return (
            f"{name:>{width}} {m['precision']:>9.{digits}f} {m['recall']:>9.{digits}f} "
            f"{m['f1']:>9.{digits}f} {int(m['support']):>9d}"
        )

    for name in CLASS_NAMES:
        lines.append(row(name, metrics["per_class"][name]))
    lines.append("")
    lines.append(
        f"{'accuracy':>{width}} {'':>9} {'':>9} {metrics['accuracy']:>9.{digits}f} {metrics['n']:>9d}"
    )
    lines.append(row("macro avg", metrics["macro_avg"]))
    lines.append(row("weighted avg", metrics["weighted_avg"]))
    extras = [
        ("ROC-AUC", metrics.get("roc_auc")),
        ("average precision", metrics.get("average_precision")),
        ("EER", metrics.get("eer")),
    ]
    lines.append("")
    for label, value in extras:
        lines.append(f"{label}: {'undefined (one class only)' if value is None else f'{value:.{digits}f}'}")
    if metrics.get("threshold_at_fpr") is not None:
        lines.append(
            f"threshold for FPR <= {metrics['target_fpr']:g}: {metrics['threshold_at_fpr']:.{digits}f} "
            f"(FPR {metrics['fpr_at_threshold']:.{digits}f}, TPR {metrics['tpr_at_fpr']:.{digits}f})"
        )
    return "\n".join(lines) + "\n"


def write_report(
    metrics: dict[str, Any], out_dir: Path, *, y_true: Sequence[int], p_fake: Sequence[float]
) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (created); return ``{"json", "text", "confusion_matrix", "roc"}``."""
    try:
        import matplotlib
    except ImportError as exc:  # the `worker` extra serves without it; reports are the `train` extra's
        raise ConfigError(
            "the report's pictures need matplotlib, which comes with the train extra: "
            "pip install 'dfscan[train]'"
        ) from exc

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "text": out_dir / "classification_report.txt",
        "confusion_matrix": out_dir / "confusion_matrix.png",
        "roc": out_dir / "roc.png",
    }
    paths["json"].write_text(json.dumps(metrics, indent=2))
    paths["text"].write_text(format_classification_report(metrics))

    cm = metrics["confusion_matrix"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    peak = max(max(r) for r in cm) or 1
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                str(cm[i][j]),
                ha="center",
                va="center",
                color="white" if cm[i][j] > peak / 2 else "black",
            )
    ax.set_xticks([0, 1], labels=list(CLASS_NAMES))
    ax.set_yticks([0, 1], labels=list(CLASS_NAMES))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (threshold {metrics['threshold']:g})")
    fig.tight_layout()
    fig.savefig(paths["confusion_matrix"], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 4))
    if metrics.get("roc_auc") is None:
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class present", ha="center", va="center")
    else:
        curve = roc_curve(y_true, p_fake)
        ax.plot(curve["fpr"], curve["tpr"], label=f"AUC = {metrics['roc_auc']:.4f}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        if metrics.get("fpr_at_threshold") is not None:
            ax.scatter(
                [metrics["fpr_at_threshold"]],
                [metrics["tpr_at_fpr"]],
                color="red",
                zorder=3,
                label=f"FPR <= {metrics['target_fpr']:g}",
            )
        ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fakes caught)")
    ax.set_title("ROC")
    fig.tight_layout()
    fig.savefig(paths["roc"], dpi=100)
    plt.close(fig)
    log.info("wrote report to %s", out_dir)
    return paths
