"""Weighted k-nearest-neighbour classifier over frozen features (the DINO / DINOv3 kNN evaluation).

Features are L2-normalised, similarity is the cosine, and each of the k nearest training samples votes
for its class with weight exp(sim / T), T = 0.07. All k values come from one top-k(max k) search, and
queries are processed in chunks so the (chunk, N_train) similarity block stays within a fixed budget.
Class scores are normalised to sum to one. With multi-hot train labels (N, C) the same weighted vote
gives per-label scores in [0, 1] (weighted fraction of neighbours carrying the label). `select_knn`
chooses k and T on the validation split, and is given nothing of the test split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dinotune.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TEMPERATURES",
    "KnnResult",
    "KnnSelection",
    "knn_classify",
    "select_knn",
]

DEFAULT_KS: tuple[int, ...] = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
DEFAULT_TEMPERATURES: tuple[float, ...] = (0.02, 0.07, 0.2)  # chosen on validation with k
_SIM_BUDGET = 1 << 24  # elements of one (queries, train) similarity block (64 MB in fp32)


@dataclass
class KnnResult:
    """Per requested k: class scores (M, C) summing to 1 (per-label in [0, 1] if multi-label) and
    predictions (M,) (multi-hot (M, C) at score > 0.5 if multi-label). `effective_k[k]` is
    min(k, N_train), the number of neighbours actually used."""

    probs: dict[int, Tensor]
    predictions: dict[int, Tensor]
    effective_k: dict[int, int]
    multilabel: bool


def _validate(train_features: Tensor, train_labels: Tensor, queries: Tensor, ks: Sequence[int]) -> None:
    if train_features.ndim != 2 or queries.ndim != 2 or train_features.shape[1] != queries.shape[1]:
        raise DataError(
            f"kNN needs (N, D) train and (M, D) query features with the same D; got "
            f"{tuple(train_features.shape)} and {tuple(queries.shape)}."
        )
    if train_features.shape[0] == 0:
        raise DataError("kNN needs at least one training sample.")
    if train_labels.shape[0] != train_features.shape[0] or train_labels.ndim not in (1, 2):
        raise DataError(
            f"kNN train labels must be (N,) class indices or (N, C) multi-hot with N = "
            f"{train_features.shape[0]}; got shape {tuple(train_labels.shape)}."
        )
    if not ks or any(int(k) < 1 for k in ks):
        raise ConfigError(f"kNN `ks` must be positive integers, got {list(ks)}.")


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> KnnResult:
    """Classify `query_features` (M, D) by temperature-weighted votes of their nearest train samples.

    `train_labels` are (N,) class indices or an (N, C) multi-hot matrix. `chunk_size` (queries per
    block) defaults to a size that keeps the similarity block near 16M elements.
    """
    _validate(train_features, train_labels, query_features, ks)
    if not temperature > 0:
        raise ConfigError(f"kNN `temperature` must be > 0, got {temperature}.")
    dev = torch.device(device) if device is not None else train_features.device
    multilabel = train_labels.ndim == 2
    train = F.normalize(train_features.to(dev).float(), dim=1)
    labels: Tensor | None = None
    multihot: Tensor | None = None
    if multilabel:
        multihot = train_labels.to(dev).float()
        c = multihot.shape[1]
    else:
        labels = train_labels.to(dev).long()
        c = int(labels.max()) + 1 if num_classes is None else num_classes
        if labels.min() < 0 or labels.max() >= c:
            raise DataError(f"kNN train labels must be class indices in [0, {c - 1}].")
    n = train.shape[0]
    eff = {int(k): min(int(k), n) for k in ks}
    kmax = max(eff.values())
    m = query_features.shape[0]
    # Bound the similarity block, and for multi-label also the gathered (chunk, kmax, C) label block.
    chunk = chunk_size or max(1, min(_SIM_BUDGET // n, _SIM_BUDGET // (kmax * c) if multilabel else m))
    scores: dict[int, list[Tensor]] = {k: [] for k in eff}
    for start in range(0, m, chunk):
        q = F.normalize(query_features[start : start + chunk].to(dev).float(), dim=1)
        sims, idx = (q @ train.T).topk(kmax, dim=1)  # sorted, most similar first
        weights = (sims / temperature).exp()
        for k, class_scores in _vote(weights, idx, c, labels, multihot, eff):
            scores[k].append(class_scores)
    probs = {k: torch.cat(v) if v else train.new_zeros(0, c) for k, v in scores.items()}
    preds = {k: (p > 0.5).long() if multilabel else p.argmax(1) for k, p in probs.items()}
    return KnnResult(probs=probs, predictions=preds, effective_k=eff, multilabel=multilabel)


def _vote(
    weights: Tensor,
    idx: Tensor,
    num_classes: int,
    labels: Tensor | None,
    multihot: Tensor | None,
    eff: dict[int, int],
) -> list[tuple[int, Tensor]]:
    """Normalised class scores for every k, accumulating neighbours in increasing k order."""
    out: list[tuple[int, Tensor]] = []
    acc = weights.new_zeros(weights.shape[0], num_classes)
    done = 0
    for k_eff in sorted(set(eff.values())):
        w = weights[:, done:k_eff]
        if multihot is not None:  # weighted sum of the neighbours' label rows
            acc = acc + torch.einsum("mk,mkc->mc", w, multihot[idx[:, done:k_eff]])
        else:
            assert labels is not None
            acc = acc.scatter_add(1, labels[idx[:, done:k_eff]], w)
        done = k_eff
        normalised = acc / weights[:, :k_eff].sum(1, keepdim=True)
        out.extend((k, normalised) for k, e in eff.items() if e == k_eff)
    return out


@dataclass(frozen=True)
class KnnSelection:
    """The (k, temperature) kept on validation, and every pair's validation score."""

    k: int
    temperature: float
    val_scores: dict[tuple[int, float], float]


def select_knn(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    score: Callable[[Tensor, Tensor], float],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    num_classes: int | None = None,
) -> KnnSelection:
    """Choose k and the temperature on the validation split alone (it is given no test data to read).

    k is capped by the number of training samples first, so k=200 over 140 images is tried once, as
    k=140. `score(probs, labels)` is higher-is-better (accuracy, mAP); ties go to the smaller k, then
    the temperature nearest the official 0.07.
    """
    n = int(train_features.shape[0])
    capped = sorted({min(int(k), n) for k in ks if int(k) >= 1}) or [1]
    if not temperatures or any(not t > 0 for t in temperatures):
        raise ConfigError(f"kNN `temperatures` must be positive numbers, got {list(temperatures)}.")
    table: dict[tuple[int, float], float] = {}
    for t in temperatures:
        res = knn_classify(train_features, train_labels, val_features, ks=capped, temperature=float(t),
                           num_classes=num_classes)  # fmt: skip
        for k in capped:
            table[(k, float(t))] = float(score(res.probs[k], val_labels))
    best = min(table, key=lambda kt: (-table[kt], kt[0], abs(math.log(kt[1] / DEFAULT_TEMPERATURE))))
    return KnnSelection(best[0], best[1], table)
