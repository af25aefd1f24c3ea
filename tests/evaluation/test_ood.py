"""OOD scores and metrics against scikit-learn and hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from dinotune.evaluation.ood import (
    auroc,
    energy_score,
    fpr_at_tpr,
    knn_distance_score,
    max_softmax_score,
    ood_metrics,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    id_scores = np.round(rng.normal(0.0, 1.0, 300), 1)  # rounding creates ties
    ood = np.round(rng.normal(1.0, 1.0, 200), 1)
    truth = np.r_[np.zeros(300), np.ones(200)]  # OOD is the positive class
    assert auroc(id_scores, ood) == pytest.approx(roc_auc_score(truth, np.r_[id_scores, ood]))
    assert auroc(id_scores, ood) > 0.5  # higher scores for OOD images: the direction is right


def test_confident_in_distribution_and_unsure_ood_give_auroc_near_one() -> None:
    """The direction end to end: sharp logits for ID images, flat ones for OOD images, every score > 0.9."""
    rng = np.random.default_rng(0)
    id_logits = rng.normal(0, 1, (200, 5)) + 8 * np.eye(5)[rng.integers(0, 5, 200)]
    ood_logits = rng.normal(0, 1, (150, 5))
    for score in (max_softmax_score, energy_score):
        assert auroc(score(id_logits), score(ood_logits)) > 0.9, score.__name__
    reference = rng.normal(0, 1, (300, 8)) + np.r_[5.0, np.zeros(7)]
    near, far = rng.normal(0, 1, (100, 8)) + np.r_[5.0, np.zeros(7)], rng.normal(0, 1, (100, 8)) - 3
    assert auroc(knn_distance_score(reference, near), knn_distance_score(reference, far)) > 0.9


def test_fpr_at_95_tpr_by_hand() -> None:
    id_scores = -np.arange(1, 21, dtype=float)  # accepting 19 of 20 (95%) needs threshold -2
    ood = -np.array([0.0, 1.5, 2.0, 3.0, 10.0])  # -2.0, -3.0 and -10.0 are accepted: 3 / 5
    assert fpr_at_tpr(id_scores, ood, 0.95) == pytest.approx(0.6)
    assert ood_metrics(id_scores, ood)["fpr_at_95_tpr"] == pytest.approx(0.6)


def test_fpr_at_95_tpr_matches_sklearn_roc_curve() -> None:
    rng = np.random.default_rng(3)
    id_scores, ood = rng.normal(0, 1, 400), rng.normal(2, 1, 300)
    # ID as the positive class of -score: the ROC curve's FPR at 95% TPR is the share of OOD accepted
    fpr, tpr, _ = roc_curve(np.r_[np.ones(400), np.zeros(300)], -np.r_[id_scores, ood], drop_intermediate=False)
    assert fpr_at_tpr(id_scores, ood) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_scores_by_hand() -> None:
    logits = np.array([[0.0, math.log(3.0)], [2.0, 2.0]])
    np.testing.assert_allclose(max_softmax_score(logits), [0.25, 0.5])
    np.testing.assert_allclose(energy_score(logits), [-math.log(4.0), -(2.0 + math.log(2.0))])
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = np.array([[2.0, 0.0], [1.0, 1.0]])  # on a reference direction; 45 degrees from two
    scores = knn_distance_score(reference, queries, k=1)
    np.testing.assert_allclose(scores, [0.0, math.sqrt(2 - math.sqrt(2))], atol=1e-6)
    # k = 2: the second neighbour of [1, 0] is [0, 1] at distance sqrt(2)
    assert knn_distance_score(reference, queries[:1], k=2)[0] == pytest.approx(math.sqrt(2), abs=1e-6)
