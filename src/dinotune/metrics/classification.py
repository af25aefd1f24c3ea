"""Classification metrics as plain, JSON-serialisable Python values.

Counting metrics come from torchmetrics so they agree with the rest of the Lightning stack; the
ranking metrics (AUROC, average precision) are computed one column at a time over the classes that
have both positives and negatives, because a class absent from the targets has no defined AUROC/AP.
Such classes are reported as `None` in per-class lists and left out of the macro averages (scikit-learn
would raise instead). Predictions must be probabilities in [0, 1]: torchmetrics silently applies a
softmax/sigmoid to anything else, which would hide a caller passing logits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dinotune.errors import DataError

__all__ = ["average_precision_columns", "classification_metrics", "multilabel_metrics"]


def average_precision_columns(scores: Tensor, targets: Tensor) -> Tensor:
    """Average precision of every column of `scores` (N, K) against binary `targets` (N, K).

    Same definition as scikit-learn's `average_precision_score` (sum over distinct thresholds of
    recall increase x precision; tied scores form one threshold), but vectorised over columns so the
    probe sweep can score hundreds of (head, label) pairs per evaluation. Columns without positives
    are NaN.
    """
    scores = scores.float()
    order = scores.argsort(dim=0, descending=True)
    ranked = targets.to(scores.dtype).gather(0, order)
    n = scores.shape[0]
    ranks = torch.arange(1, n + 1, device=scores.device, dtype=scores.dtype).unsqueeze(1)
    precision = ranked.cumsum(0) / ranks
    # Ties: every element of a tie group takes the precision at the group's last position.
    neg_sorted = (-scores.gather(0, order)).T.contiguous()
    group_end = torch.searchsorted(neg_sorted, neg_sorted, right=True) - 1
    precision_at_end = precision.T.gather(1, group_end)
    positives = ranked.sum(0)
    return (ranked.T * precision_at_end).sum(1) / positives


def _tm() -> Any:
    """torchmetrics' classification functionals, imported on first use: the package import costs
    seconds (it pulls in its text metrics), which `import dinotune.tasks.probe` should not pay."""
    from torchmetrics.functional import classification

    return classification


def _check_probs(probs: Tensor, name: str = "probs") -> Tensor:
    if probs.ndim != 2:
        raise DataError(f"`{name}` must be a (N, C) matrix of probabilities, got shape {tuple(probs.shape)}.")
    probs = probs.detach().float().cpu()
    tolerance = 1e-4  # normalised sums can overshoot 1 by rounding
    if not torch.isfinite(probs).all() or probs.min() < -tolerance or probs.max() > 1 + tolerance:
        raise DataError(
            f"`{name}` must hold probabilities in [0, 1]; apply softmax (single-label) or sigmoid "
            "(multi-label) to logits first."
        )
    return probs.clamp(0, 1)


def _names(names: Sequence[str] | None, count: int, field: str) -> list[str]:
    if names is None:
        return [str(i) for i in range(count)]
    if len(names) != count:
        raise DataError(f"`{field}` has {len(names)} names but the predictions have {count} columns.")
    return [str(n) for n in names]


def _per_column_auroc(probs: Tensor, onehot: Tensor) -> list[float | None]:
    """AUROC of each column one-vs-rest; None where a column has no positives or no negatives."""
    positives = onehot.sum(0)
    defined = (positives > 0) & (positives < onehot.shape[0])
    with warnings.catch_warnings():  # undefined columns warn in torchmetrics; we report them as None
        warnings.simplefilter("ignore", UserWarning)
        values = _tm().multilabel_auroc(probs, onehot.long(), num_labels=probs.shape[1], average=None)
    return [float(v) if ok else None for v, ok in zip(values.tolist(), defined.tolist(), strict=True)]


def _mean_defined(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def classification_metrics(probs: Tensor, targets: Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Single-label metrics from class probabilities `probs` (N, C) and integer `targets` (N,).

    Macro averages follow scikit-learn's default label set (classes that occur in targets or
    predictions); `balanced_accuracy` is the mean recall over classes present in the targets, like
    `sklearn.metrics.balanced_accuracy_score`. `auroc` is one-vs-rest macro over classes with both
    positives and negatives; for C == 2 it is the AUROC of class 1's probability (scikit-learn's binary
    convention). `top5_accuracy` is only reported when C > 5.
    """
    probs = _check_probs(probs)
    targets = targets.detach().cpu().long()
    n, c = probs.shape
    if targets.shape != (n,):
        raise DataError(f"`targets` must have shape ({n},) to match `probs`, got {tuple(targets.shape)}.")
    if n == 0:
        raise DataError("Cannot compute metrics on an empty split: `probs` has no rows.")
    if targets.min() < 0 or targets.max() >= c:
        raise DataError(f"`targets` must be class indices in [0, {c - 1}] to match `probs`' {c} columns.")
    names = _names(class_names, c, "class_names")
    preds = probs.argmax(1)
    kw: dict[str, Any] = {"num_classes": c, "validate_args": False}
    support = torch.bincount(targets, minlength=c)
    recall_per_class = _tm().multiclass_recall(preds, targets, average="none", **kw)
    present = support > 0
    out: dict[str, Any] = {
        "num_samples": n,
        "accuracy": float(_tm().multiclass_accuracy(preds, targets, average="micro", **kw)),
        "balanced_accuracy": float(recall_per_class[present].mean()),
    }
    for avg in ("macro", "weighted"):
        out[f"precision_{avg}"] = float(_tm().multiclass_precision(preds, targets, average=avg, **kw))
        out[f"recall_{avg}"] = float(_tm().multiclass_recall(preds, targets, average=avg, **kw))
        out[f"f1_{avg}"] = float(_tm().multiclass_f1_score(preds, targets, average=avg, **kw))
    onehot = torch.nn.functional.one_hot(targets, c).float()
    auroc = _per_column_auroc(probs, onehot)
    out["auroc"] = auroc[1] if c == 2 else _mean_defined(auroc)
    if c > 5:
        out["top5_accuracy"] = float(_tm().multiclass_accuracy(probs, targets, average="micro", top_k=5, **kw))
    precision = _tm().multiclass_precision(preds, targets, average="none", **kw).tolist()
    f1 = _tm().multiclass_f1_score(preds, targets, average="none", **kw).tolist()
    out["per_class"] = [
        {
            "class": names[i],
            "precision": precision[i],
            "recall": float(recall_per_class[i]),
            "f1": f1[i],
            "support": int(support[i]),
            "auroc": auroc[i],
        }
        for i in range(c)
    ]
    out["confusion_matrix"] = _tm().multiclass_confusion_matrix(preds, targets, **kw).tolist()
    return out


def multilabel_metrics(
    probs: Tensor, targets: Tensor, label_names: Sequence[str] | None = None, threshold: float = 0.5
) -> dict[str, Any]:
    """Multi-label metrics from per-label probabilities `probs` (N, C) and multi-hot `targets` (N, C).

    `map` is the macro average precision over labels with at least one positive; F1 scores binarise
    with `probs > threshold` (strictly greater, as torchmetrics does).
    """
    probs = _check_probs(probs)
    if targets.shape != probs.shape:
        raise DataError(
            f"`targets` must be a multi-hot matrix of shape {tuple(probs.shape)}, got {tuple(targets.shape)}."
        )
    targets = targets.detach().cpu()
    if ((targets != 0) & (targets != 1)).any():
        raise DataError("`targets` must be multi-hot: every entry 0 or 1.")
    n, c = probs.shape
    if n == 0:
        raise DataError("Cannot compute metrics on an empty split: `probs` has no rows.")
    names = _names(label_names, c, "label_names")
    ap_values = average_precision_columns(probs, targets)
    ap = [None if math.isnan(v) else v for v in ap_values.tolist()]
    auroc = _per_column_auroc(probs, targets.float())
    kw: dict[str, Any] = {"num_labels": c, "threshold": threshold, "validate_args": False}
    itargets = targets.long()
    f1 = _tm().multilabel_f1_score(probs, itargets, average="none", **kw).tolist()
    support = targets.sum(0).long().tolist()
    return {
        "num_samples": n,
        "map": _mean_defined(ap),
        "auroc_macro": _mean_defined(auroc),
        "f1_micro": float(_tm().multilabel_f1_score(probs, itargets, average="micro", **kw)),
        "f1_macro": float(_tm().multilabel_f1_score(probs, itargets, average="macro", **kw)),
        "per_label": [
            {
                "label": names[i],
                "average_precision": ap[i],
                "auroc": auroc[i],
                "f1": f1[i],
                "support": support[i],
            }
            for i in range(c)
        ],
    }


def best_threshold(probs: Tensor, targets: Tensor) -> float:
    """The decision threshold (one for all labels, 0.05 to 0.95 in steps of 0.05) with the best micro-F1 on
    `probs`/`targets`, meant for the validation split; ties go to the threshold nearest 0.5."""
    probs, targets = _check_probs(probs), targets.detach().cpu().bool()
    best, best_f1 = 0.5, -1.0
    for t in sorted((round(0.05 * k, 2) for k in range(1, 20)), key=lambda t: abs(t - 0.5)):
        predicted = probs > t
        tp = (predicted & targets).sum().item()
        f1 = 2 * tp / max(1, predicted.sum().item() + targets.sum().item())
        if f1 > best_f1:
            best, best_f1 = t, f1
    return best
