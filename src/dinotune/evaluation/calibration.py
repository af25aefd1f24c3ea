"""Calibration: does a 90 % confidence mean right 9 times out of 10?

ECE uses 15 equal-width confidence bins (Guo et al., 2017), bin b covering (b/15, (b+1)/15] so a
confidence of exactly 1.0 lands in the last bin and 0 in none (a softmax maximum is never 0). Temperature
scaling divides the logits by one scalar T fitted to minimise the negative log-likelihood on the
*validation* split, so the test split stays untouched; it never changes the predicted class. Whether T
is applied is decided on the validation split too (`choose_temperature`): only if it lowers the ECE there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dinotune.errors import DataError

__all__ = [
    "N_BINS",
    "Reliability",
    "TemperatureChoice",
    "choose_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability",
    "softmax",
]

N_BINS = 15
_LOG_T_MIN, _LOG_T_MAX = math.log(0.05), math.log(20.0)


@dataclass
class Reliability:
    """Per-bin data of a reliability diagram: `edges` (B+1,), and per bin the mean confidence, the
    accuracy and the count (NaN confidence/accuracy where a bin is empty)."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray
    ece: float


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],) or probs.shape[0] == 0:
        raise DataError(
            f"calibration needs (N, C) probabilities and (N,) labels, N > 0; got {probs.shape} and {labels.shape}."
        )
    return probs, labels


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> Reliability:
    """Bin the top-class confidence into `n_bins` equal-width bins and compare with accuracy per bin."""
    probs, labels = _check(probs, labels)
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds confidences in (edges[b], edges[b+1]]
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / counts
    gaps = np.where(counts > 0, np.abs(accuracy - mean_conf), 0.0)
    ece = float((counts / counts.sum() * gaps).sum())
    return Reliability(edges, mean_conf, accuracy, counts, ece)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|."""
    return reliability(probs, labels, n_bins).ece


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.from_numpy(np.asarray(logits, dtype=np.float64) / temperature).softmax(1).numpy()


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / T) against integer labels."""
    x = torch.from_numpy(np.asarray(logits, dtype=np.float64) / temperature)
    return float(F.cross_entropy(x, torch.from_numpy(np.asarray(labels).astype(np.int64))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The T > 0 minimising validation NLL of softmax(logits / T), optimised in log T with L-BFGS.

    Optimising log T keeps T positive without constraints; NLL is convex in 1/T, so L-BFGS finds the
    global minimum from T = 1. T is kept in [0.05, 20]: on perfectly separated validation data the NLL
    keeps falling as T -> 0, and such a T would say nothing about new images.
    """
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels).astype(np.int64))
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise DataError(
            f"temperature scaling needs (N, C) logits and (N,) labels; got {tuple(x.shape)}, {tuple(y.shape)}."
        )
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x / log_t.clamp(_LOG_T_MIN, _LOG_T_MAX).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().clamp(_LOG_T_MIN, _LOG_T_MAX).exp())
    return t if math.isfinite(t) else 1.0


@dataclass
class TemperatureChoice:
    """A temperature fitted on validation, and whether to apply it (also decided on validation)."""

    temperature: float
    applied: bool
    val_ece: float
    val_ece_scaled: float
    reason: str


def choose_temperature(val_logits: np.ndarray, val_labels: np.ndarray) -> TemperatureChoice:
    """Fit T on the validation split and apply it only if it lowers the validation ECE: the NLL it
    minimises can fall while the ECE a reader looks at rises, and then the raw probabilities are better."""
    t = fit_temperature(val_logits, val_labels)
    before = expected_calibration_error(softmax(val_logits), val_labels)
    after = expected_calibration_error(softmax(val_logits, t), val_labels)
    applied = after < before
    verdict = "applied" if applied else "not applied, the model's own probabilities are kept"
    reason = f"T = {t:.3f} {verdict}: on the validation split it {'lowers' if applied else 'does not lower'} " \
             f"the ECE ({before:.3f} -> {after:.3f})."  # fmt: skip
    return TemperatureChoice(t, applied, before, after, reason)
