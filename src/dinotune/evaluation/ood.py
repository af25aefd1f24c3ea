"""Out-of-distribution detection: can the model tell that an image is unlike anything it was trained on?

Three scores, all oriented "higher = more out-of-distribution":
  * 1 - maximum softmax probability (Hendrycks & Gimpel, 2017);
  * free energy: -T * logsumexp(logits / T) (Liu et al., 2020);
  * kNN distance: the Euclidean distance of the L2-normalised feature to its k-th nearest training
    feature (Sun et al., 2022); it needs no logits, so it also judges the backbone's features.
OOD images are the positive class: AUROC is the probability that a random OOD image scores above a
random in-distribution one (0.5 = no better than chance; below 0.5 the score ranks backwards on these
data, which the report says), and FPR@95TPR is the fraction of OOD images still accepted as
in-distribution at the threshold that accepts 95 % of the in-distribution images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dinotune.errors import DataError

__all__ = ["auroc", "energy_score", "fpr_at_tpr", "knn_distance_score", "max_softmax_score", "ood_metrics"]


def max_softmax_score(logits: np.ndarray) -> np.ndarray:
    """1 - the top-class probability."""
    return 1.0 - torch.from_numpy(np.asarray(logits, dtype=np.float64)).softmax(1).max(1).values.numpy()


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The free energy -T logsumexp(logits / T)."""
    x = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    return (-temperature * torch.logsumexp(x / temperature, dim=1)).numpy()


def knn_distance_score(reference: np.ndarray, queries: np.ndarray, k: int = 10, chunk: int = 1024) -> np.ndarray:
    """||z - z_(k)|| for L2-normalised features, z_(k) the k-th nearest reference (train) feature.

    k is capped at the number of reference features. Queries go in chunks so memory stays bounded.
    """
    ref = F.normalize(torch.as_tensor(np.asarray(reference), dtype=torch.float32), dim=1)
    qry = torch.as_tensor(np.asarray(queries), dtype=torch.float32)
    if ref.ndim != 2 or qry.ndim != 2 or ref.shape[1] != qry.shape[1] or ref.shape[0] == 0:
        raise DataError(
            f"kNN OOD score needs (N, D) reference and (M, D) query features with N > 0; got "
            f"{tuple(ref.shape)} and {tuple(qry.shape)}."
        )
    k = max(1, min(k, ref.shape[0]))
    out = []
    for start in range(0, qry.shape[0], chunk):
        q = F.normalize(qry[start : start + chunk], dim=1)
        kth_sim = (q @ ref.T).topk(k, dim=1).values[:, -1]
        out.append(torch.sqrt((2 - 2 * kth_sim).clamp_min(0)))  # unit vectors: |a-b|^2 = 2 - 2 cos
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def _pair(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(id_scores, dtype=np.float64).ravel(), np.asarray(ood_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise DataError(f"OOD metrics need in-distribution and OOD scores; got {a.size} and {b.size}.")
    return a, b


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """P(ood > id) + 0.5 P(ood == id): the Mann-Whitney U statistic, equal to the ROC area (OOD positive)."""
    a, b = _pair(id_scores, ood_scores)
    a_sorted = np.sort(a)
    below = np.searchsorted(a_sorted, b, side="left")
    ties = np.searchsorted(a_sorted, b, side="right") - below
    return float((below + 0.5 * ties).sum() / (a.size * b.size))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of OOD scores <= the lowest threshold that accepts at least `tpr` of the ID scores
    (an image is accepted as in-distribution when its score is at most the threshold)."""
    a, b = _pair(id_scores, ood_scores)
    a_asc = np.sort(a)
    threshold = a_asc[max(int(np.ceil(tpr * a.size - 1e-9)), 1) - 1]  # accepting score <= threshold keeps >= tpr of a
    return float((b <= threshold).mean())


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc(id_scores, ood_scores), "fpr_at_95_tpr": fpr_at_tpr(id_scores, ood_scores, 0.95)}
