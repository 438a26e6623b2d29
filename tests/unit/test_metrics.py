"""evaluate_scores against numbers computed by hand, and the edge cases where a metric is undefined."""

from __future__ import annotations

import pytest

from dfscan.exceptions import TrainingDataError
from worker.training.metrics import average_precision, evaluate_scores, roc_auc, roc_curve, threshold_at_fpr

# 4 real, 4 fake; one real and one fake tie at 0.6.
Y = [0, 0, 0, 0, 1, 1, 1, 1]
P = [0.1, 0.3, 0.6, 0.8, 0.2, 0.6, 0.7, 0.9]


def test_hand_computed_example() -> None:
    m = evaluate_scores(Y, P, threshold=0.5, target_fpr=0.25)
    # at p >= 0.5: reals 0.6, 0.8 are false positives; fake 0.2 is a false negative
    assert m["confusion_matrix"] == [[2, 2], [1, 3]]  # [[TN, FP], [FN, TP]], rows = true class
    assert m["accuracy"] == pytest.approx(5 / 8)
    real, fake = m["per_class"]["Real"], m["per_class"]["Fake"]
    assert real == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7, "support": 4})
    assert fake == pytest.approx({"precision": 3 / 5, "recall": 3 / 4, "f1": 2 / 3, "support": 4})
    assert m["macro_avg"] == pytest.approx(
        {"precision": 19 / 30, "recall": 5 / 8, "f1": 13 / 21, "support": 8}
    )
    assert m["weighted_avg"]["f1"] == pytest.approx(13 / 21)  # equal supports
    # fake>real pairs: 0.2>0.1 (1), 0.6>0.1,0.3 and ties 0.6 (2.5), 0.7 (3), 0.9 (4) = 10.5 of 16
    assert m["roc_auc"] == pytest.approx(10.5 / 16)
    # precision at each new recall level: 1 (R .25), 2/3 (R .5), 3/5 (R .75), 4/7 (R 1)
    assert m["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 5 + 4 / 7) / 4)
    # at threshold 0.7: FPR 1/4, FNR 1/2 (the closest pair; 0.6 gives 1/2 and 1/4, a lower threshold)
    assert m["eer"] == pytest.approx(0.375)
    assert m["eer_threshold"] == pytest.approx(0.7)
    # lowest threshold with FPR <= 0.25 is 0.7 (one real at 0.8 above it), catching 2 of 4 fakes
    assert (m["threshold_at_fpr"], m["fpr_at_threshold"], m["tpr_at_fpr"]) == pytest.approx((0.7, 0.25, 0.5))


def test_roc_curve_moves_ties_together() -> None:
    curve = roc_curve(Y, P)
    assert curve["thresholds"][1:] == [0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1]
    assert curve["fpr"] == [0, 0, 0.25, 0.25, 0.5, 0.75, 0.75, 1.0]
    assert curve["tpr"] == [0, 0.25, 0.25, 0.5, 0.75, 0.75, 1.0, 1.0]


def test_strict_fpr_budget_and_perfect_separation() -> None:
    assert threshold_at_fpr(Y, P, 0.05) == pytest.approx({"threshold": 0.9, "fpr": 0.0, "tpr": 0.25})
    # the highest score is real: nothing can be called fake within a zero budget
    top_real = threshold_at_fpr([0, 1], [0.9, 0.1], 0.0)
    assert top_real is not None and top_real["threshold"] > 0.9 and top_real["tpr"] == 0.0
    perfect = evaluate_scores([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert perfect["roc_auc"] == 1.0 and perfect["average_precision"] == 1.0 and perfect["eer"] == 0.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5


def test_one_class_only_leaves_ranking_metrics_undefined() -> None:
    only_real = evaluate_scores([0, 0, 0], [0.2, 0.7, 0.4])
    assert (
        only_real["roc_auc"] is None and only_real["eer"] is None and only_real["average_precision"] is None
    )
    assert only_real["confusion_matrix"] == [[2, 1], [0, 0]]
    assert only_real["per_class"]["Fake"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert only_real["threshold_at_fpr"] > 0.7 and only_real["fpr_at_threshold"] == 0.0  # above every real
    only_fake = evaluate_scores([1, 1], [0.3, 0.9])
    assert only_fake["roc_auc"] is None and only_fake["threshold_at_fpr"] is None
    assert average_precision([1, 1], [0.3, 0.9]) == 1.0


def test_bad_inputs_fail_clearly() -> None:
    with pytest.raises(TrainingDataError, match="no samples"):
        evaluate_scores([], [])
    with pytest.raises(ValueError, match="pair up"):
        evaluate_scores([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 \\(Real\\) or 1 \\(Fake\\)"):
        evaluate_scores([0, 2], [0.5, 0.5])
