"""Weighted k-nearest-neighbour classifier over frozen features (the DINO / DINOv3 kNN evaluation).

Features are L2-normalised, similarity is the cosine, and each of the k nearest training samples votes
for its class with weight exp(sim / T), T = 0.07. All k values come from one top-k(max k) search, and
queries are processed in chunks so the (chunk, N_train) similarity block stays within a fixed budget.
Class scores are normalised to sum to one. With multi-hot train labels (N, C) the same weighted vote
gives per-label scores in [0, 1] (weighted fraction of neighbours carrying the label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dinotune.errors import ConfigError, DataError

__all__ = ["DEFAULT_KS", "DEFAULT_TEMPERATURE", "KnnResult", "knn_classify"]

DEFAULT_KS: tuple[int, ...] = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
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
