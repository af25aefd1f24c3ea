"""dinotune.metrics.classification must agree with scikit-learn on fixed random predictions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from dinotune.errors import DataError
from dinotune.metrics import average_precision_columns, classification_metrics, multilabel_metrics

TOL = 1e-6


def _random_case(n: int, c: int, seed: int, drop_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, c, (n,), generator=g)
    if drop_class is not None:
        targets[targets == drop_class] = (drop_class + 1) % c
    probs = torch.softmax(2 * torch.randn(n, c, generator=g, dtype=torch.float64), 1).float()
    return probs, targets


def _check_counting_metrics(m: dict, y: np.ndarray, pred: np.ndarray) -> None:
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=TOL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=TOL)
        for avg in ("macro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
            assert m[f"precision_{avg}"] == pytest.approx(p, abs=TOL)
            assert m[f"recall_{avg}"] == pytest.approx(r, abs=TOL)
            assert m[f"f1_{avg}"] == pytest.approx(f, abs=TOL)
        p, r, f, s = skm.precision_recall_fscore_support(
            y, pred, labels=list(range(len(m["per_class"]))), zero_division=0
        )
    table = m["per_class"]
    np.testing.assert_allclose([row["precision"] for row in table], p, atol=TOL)
    np.testing.assert_allclose([row["recall"] for row in table], r, atol=TOL)
    np.testing.assert_allclose([row["f1"] for row in table], f, atol=TOL)
    assert [row["support"] for row in table] == s.tolist()


def test_multiclass_matches_sklearn() -> None:
    probs, targets = _random_case(400, 7, seed=0)
    m = classification_metrics(probs, targets)
    y, p = targets.numpy(), probs.double().numpy()
    _check_counting_metrics(m, y, p.argmax(1))
    p = p / p.sum(1, keepdims=True)  # sklearn insists on exact normalisation for ovr
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=TOL)
    assert m["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=5, labels=range(7)), abs=TOL)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p.argmax(1), labels=range(7)).tolist()
    json.dumps(m)


def test_binary_auroc_and_no_top5() -> None:
    probs, targets = _random_case(300, 2, seed=1)
    m = classification_metrics(probs, targets, class_names=["ok", "defect"])
    y = targets.numpy()
    _check_counting_metrics(m, y, probs.numpy().argmax(1))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1].numpy()), abs=TOL)
    assert "top5_accuracy" not in m
    assert [row["class"] for row in m["per_class"]] == ["ok", "defect"]


def test_class_missing_from_targets_is_excluded_not_fatal() -> None:
    probs, targets = _random_case(300, 6, seed=2, drop_class=3)
    m = classification_metrics(probs, targets)
    y, p = targets.numpy(), probs.numpy()
    _check_counting_metrics(m, y, p.argmax(1))
    present = [k for k in range(6) if k != 3]
    expected = np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in present])
    assert m["auroc"] == pytest.approx(expected, abs=TOL)
    assert m["per_class"][3]["auroc"] is None and m["per_class"][3]["support"] == 0
    assert "top5_accuracy" in m


def test_multilabel_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(3)
    targets = (torch.rand(250, 5, generator=g) < 0.3).float()
    probs = (torch.rand(250, 5, generator=g) + 0.6 * targets).clamp(max=1.0)
    probs[:40, 0] = 0.5  # ties and a score exactly at the threshold
    m = multilabel_metrics(probs, targets)
    y, p = targets.numpy(), probs.numpy()
    assert m["map"] == pytest.approx(skm.average_precision_score(y, p, average="macro"), abs=TOL)
    per_label_auc = [skm.roc_auc_score(y[:, k], p[:, k]) for k in range(5)]
    np.testing.assert_allclose([r["auroc"] for r in m["per_label"]], per_label_auc, atol=TOL)
    assert m["auroc_macro"] == pytest.approx(np.mean(per_label_auc), abs=TOL)
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, p > 0.5, average="micro"), abs=TOL)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, p > 0.5, average="macro"), abs=TOL)
    json.dumps(m)


def test_average_precision_columns_with_ties() -> None:
    g = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 6, (120, 8), generator=g).float()  # many ties
    targets = (torch.rand(120, 8, generator=g) < 0.4).float()
    ap = average_precision_columns(scores, targets)
    expected = [skm.average_precision_score(targets[:, k], scores[:, k]) for k in range(8)]
    np.testing.assert_allclose(ap.numpy(), expected, atol=TOL)


def test_rejects_logits() -> None:
    with pytest.raises(DataError, match="probabilities"):
        classification_metrics(torch.randn(10, 3) * 5, torch.zeros(10, dtype=torch.long))
