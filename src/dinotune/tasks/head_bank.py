"""`HeadBank`: many linear heads trained at once on the same features (the probe sweep's engine).

The heads of one feature choice live in a single (D, H, C) weight tensor evaluated with one GEMM
(`X @ W.view(D, H*C)`); each head has its own learning rate and weight decay, applied by a vectorised
SGD-momentum step over the stacked tensors, and its own early-stopping record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dinotune.errors import ConfigError
from dinotune.metrics import average_precision_columns

MOMENTUM = 0.9
_STD_FLOOR = 1e-6
_EVAL_BUDGET = 1 << 23  # elements of a (rows, heads * classes) logits chunk during evaluation


@dataclass
class FeatureSet:
    """One split: feature kind -> (N, D_kind) tensor, and labels (N,) int or (N, C) multi-hot float."""

    features: dict[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def standardisation_stats(x: Tensor, chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std (float64 accumulation, chunked to bound memory)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].double()
        total += part.sum(0)
        total_sq += (part * part).sum(0)
    mean = total / x.shape[0]
    std = (total_sq / x.shape[0] - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < _STD_FLOOR, torch.ones_like(std), std)
    return mean.float(), std.float()


class HeadBank:
    """H linear heads over one input, stored as one (D, H, C) weight and (H, C) bias.

    Call `train_step` once per minibatch and `record_evaluation` after each validation pass; heads
    that stopped (early stopping or divergence) are masked out of every later update.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        *,
        multilabel: bool = False,
        class_weights: Tensor | None = None,
        label_smoothing: float = 0.0,
        momentum: float = MOMENTUM,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(lrs) != len(weight_decays):
            raise ConfigError("HeadBank needs one weight decay per learning rate.")
        h = len(lrs)
        self.num_heads, self.num_classes, self.in_dim = h, num_classes, in_dim
        self.multilabel = multilabel
        self.label_smoothing = label_smoothing
        self.momentum = momentum
        self.class_weights = None if class_weights is None else class_weights.float().to(device)
        self.lrs = torch.tensor(list(lrs), dtype=torch.float32, device=device)
        self.weight_decays = torch.tensor(list(weight_decays), dtype=torch.float32, device=device)
        self.weight = torch.zeros(in_dim, h, num_classes, device=device)
        self.bias = torch.zeros(h, num_classes, device=device)
        self._buf_w = torch.zeros(in_dim, h, num_classes, device=device)
        self._buf_b = torch.zeros(h, num_classes, device=device)
        self.active = torch.ones(h, dtype=torch.bool, device=device)
        self.best_weight = self.weight.clone()
        self.best_bias = self.bias.clone()
        self.best_score = torch.full((h,), -math.inf, device=device)
        self.best_loss = torch.full((h,), math.inf, device=device)
        self.best_epoch = torch.zeros(h, dtype=torch.long, device=device)
        self.stopped_epoch = torch.zeros(h, dtype=torch.long, device=device)
        self._stale = torch.zeros(h, dtype=torch.long, device=device)

    @classmethod
    def from_weights(cls, weight: Tensor, bias: Tensor, **loss_options: Any) -> HeadBank:
        """A bank holding given (D, H, C) weights and (H, C) biases, to score heads trained elsewhere
        (the L-BFGS path) with exactly the loss and metric the SGD heads are scored with."""
        d, h, c = weight.shape
        bank = cls(d, c, [0.0] * h, [0.0] * h, device=weight.device, **loss_options)
        bank.weight, bank.bias = weight.contiguous(), bias.contiguous()
        return bank

    def logits(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """(B, H, C) logits of all heads in one GEMM over the shared input x (B, D)."""
        w = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        out = torch.addmm(b.reshape(1, -1), x, w.reshape(self.in_dim, -1))
        return out.view(x.shape[0], self.num_heads, self.num_classes)

    def _soft_targets(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Single-label CE as -sum_c T[i, c] log p[i, c]: T folds class weights and label smoothing.

        T = (1 - eps) w[y] onehot(y) + (eps / C) w, exactly `F.cross_entropy`'s weighted, smoothed loss;
        its mean reduction divides by sum_i w[y_i] (returned as the normaliser).
        """
        c, eps = self.num_classes, self.label_smoothing
        onehot = F.one_hot(targets, c).float()
        if self.class_weights is None:
            return onehot * (1 - eps) + eps / c, torch.tensor(float(targets.shape[0]), device=targets.device)
        w = self.class_weights
        soft = onehot * ((1 - eps) * w[targets]).unsqueeze(1) + (eps / c) * w
        return soft, w[targets].sum()

    def _bce_targets(self, targets: Tensor) -> Tensor:
        eps = self.label_smoothing
        return targets * (1 - eps) + eps / 2 if eps else targets

    def loss_sums(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head loss summed over the batch (H,) and the normaliser that turns it into a mean."""
        b, h, c = logits.shape
        if self.multilabel:
            tgt = self._bce_targets(targets.float()).unsqueeze(1).expand(b, h, c)
            per = F.binary_cross_entropy_with_logits(logits, tgt, pos_weight=self.class_weights, reduction="none")
            return per.sum((0, 2)), torch.tensor(float(b * c), device=logits.device)
        soft, norm = self._soft_targets(targets)
        per = -(logits.log_softmax(2) * soft.unsqueeze(1)).sum(2)
        return per.sum(0), norm

    def _logit_grad(self, logits: Tensor, targets: Tensor) -> Tensor:
        """d(mean loss)/d(logits), in closed form: cheaper than autograd through (B, H, C)."""
        if self.multilabel:
            t = self._bce_targets(targets.float()).unsqueeze(1)
            sig = torch.sigmoid(logits)
            if self.class_weights is None:
                grad = sig - t
            else:
                pt = self.class_weights * t
                grad = (pt + 1 - t) * sig - pt
            return grad / (logits.shape[0] * self.num_classes)
        soft, norm = self._soft_targets(targets)
        coeff = soft.sum(1).view(-1, 1, 1)
        return (logits.softmax(2) * coeff - soft.unsqueeze(1)) / norm

    @torch.no_grad()
    def train_step(self, x: Tensor, targets: Tensor, lr_factor: float = 1.0) -> None:
        """One SGD-momentum step of every active head on minibatch (x, targets).

        Gradients are per head (each head's loss is a mean over the batch), so heads are independent;
        torch.optim.SGD semantics: buf = m * buf + (g + wd * w); w -= lr * buf.
        """
        d_logits = self._logit_grad(self.logits(x), targets).reshape(x.shape[0], -1)
        g_w = (x.T @ d_logits).view_as(self.weight)
        g_w.addcmul_(self.weight, self.weight_decays.view(1, -1, 1))
        neg_lr = -(self.lrs * lr_factor * self.active)
        self._buf_w = g_w.add_(self._buf_w, alpha=self.momentum)  # reuse the gradient's memory
        self._buf_b.mul_(self.momentum).add_(d_logits.sum(0).view_as(self.bias))
        self.weight.addcmul_(self._buf_w, neg_lr.view(1, -1, 1))
        self.bias.addcmul_(self._buf_b, neg_lr.view(-1, 1))

    @torch.no_grad()
    def evaluate(self, x: Tensor, targets: Tensor, *, best: bool = False) -> tuple[Tensor, Tensor]:
        """Validation score (H,) (accuracy or mAP) and mean loss (H,) of the current (or best) weights."""
        w, b = (self.best_weight, self.best_bias) if best else (self.weight, self.bias)
        rows = max(1, _EVAL_BUDGET // (self.num_heads * self.num_classes))
        loss_sum = torch.zeros(self.num_heads, device=x.device, dtype=torch.float64)
        norm_sum = 0.0
        correct = torch.zeros(self.num_heads, device=x.device, dtype=torch.float64)
        all_logits = []
        for start in range(0, x.shape[0], rows):
            logits = self.logits(x[start : start + rows], w, b)
            tgt = targets[start : start + rows]
            sums, norm = self.loss_sums(logits, tgt)
            loss_sum += sums.double()
            norm_sum += float(norm)
            if self.multilabel:
                all_logits.append(logits.reshape(logits.shape[0], -1))
            else:
                correct += (logits.argmax(2) == tgt.unsqueeze(1)).sum(0).double()
        loss = (loss_sum / norm_sum).float()
        if self.multilabel:
            score = _map_per_head(torch.cat(all_logits), targets, self.num_heads)
        else:
            score = (correct / x.shape[0]).float()
        bad = ~torch.isfinite(loss) | ~torch.isfinite(score)
        return torch.where(bad, -math.inf, score), torch.where(bad, math.inf, loss)

    @torch.no_grad()
    def record_evaluation(self, score: Tensor, loss: Tensor, epoch: int, patience: int | None) -> None:
        """Keep each active head's best weights; stop heads out of patience or diverged."""
        improved = self.active & (score > self.best_score)
        self.best_score = torch.where(improved, score, self.best_score)
        self.best_loss = torch.where(improved, loss, self.best_loss)
        self.best_epoch = torch.where(improved, epoch, self.best_epoch)
        mask = improved.view(1, -1, 1)
        self.best_weight = torch.where(mask, self.weight, self.best_weight)
        self.best_bias = torch.where(improved.view(-1, 1), self.bias, self.best_bias)
        self._stale = torch.where(improved, 0, self._stale + 1)
        stop = self.active & ~torch.isfinite(loss)
        if patience is not None:
            stop |= self.active & (self._stale >= patience)
        if stop.any():
            self.stop(stop, epoch)

    @torch.no_grad()
    def stop(self, heads: Tensor, epoch: int) -> None:
        """Freeze `heads` (bool mask): restore best weights, clear momentum, exclude from updates."""
        self.weight.copy_(torch.where(heads.view(1, -1, 1), self.best_weight, self.weight))
        self.bias.copy_(torch.where(heads.view(-1, 1), self.best_bias, self.bias))
        self._buf_w.masked_fill_(heads.view(1, -1, 1), 0.0)
        self._buf_b.masked_fill_(heads.view(-1, 1), 0.0)
        self.stopped_epoch = torch.where(heads, epoch, self.stopped_epoch)
        self.active &= ~heads

    def head_state(self, index: int, *, best: bool = True) -> dict[str, Tensor]:
        """nn.Linear-compatible {'weight': (C, D), 'bias': (C,)} of head `index`."""
        w, b = (self.best_weight, self.best_bias) if best else (self.weight, self.bias)
        return {"weight": w[:, index, :].T.contiguous().cpu(), "bias": b[index].clone().cpu()}


def _map_per_head(logits: Tensor, targets: Tensor, num_heads: int) -> Tensor:
    """Macro AP per head over labels with at least one positive; logits (N, H*C), targets (N, C)."""
    c = targets.shape[1]
    ap = average_precision_columns(logits, targets.repeat(1, num_heads)).view(num_heads, c)
    has_pos = targets.sum(0) > 0
    if not has_pos.any():
        return torch.full((num_heads,), math.nan, device=logits.device)
    return ap[:, has_pos].mean(1)


class Standardiser:
    """Per-kind train statistics; standardises gathered rows of any split on the fly."""

    def __init__(self, train: FeatureSet, kinds: Sequence[str], device: torch.device) -> None:
        self.stats = {k: standardisation_stats(train.features[k].to(device).float()) for k in kinds}

    def rows(self, split_features: Mapping[str, Tensor], kind: str, idx: Tensor | None = None) -> Tensor:
        x = split_features[kind]
        x = x if idx is None else x.index_select(0, idx)
        mean, std = self.stats[kind]
        return (x.float() - mean) / std

    def concat_stats(self, kinds: Sequence[str]) -> tuple[Tensor, Tensor]:
        mean = torch.cat([self.stats[k][0] for k in kinds]).cpu()
        std = torch.cat([self.stats[k][1] for k in kinds]).cpu()
        return mean, std
