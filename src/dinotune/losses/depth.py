"""Depth losses on valid pixels only: the scale-invariant log loss (SILog) and a multi-scale gradient loss.

SILog (Eigen et al. 2014), as the DINOv2/v3 depth protocol computes it: with g = log(pred) - log(gt) over
the valid pixels of the batch, loss = sqrt(Var(g) + 0.15 * mean(g)^2), i.e. sqrt(mean(g^2) - lambda *
mean(g)^2) with lambda = 0.85 (Var taken with 1/n). lambda = 1 would ignore a global scale error entirely;
0.85 mostly forgives it while still learning metric scale. The gradient loss (MegaDepth) compares the
x/y differences of g at 4 scales, which sharpens depth edges; it is off by default (`gradient_weight: 0`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from dinotune.config import StrictModel

EPS = 1e-3  # the official loss's epsilon inside the logs


class DepthLossConfig(StrictModel):
    """The `loss:` section of a depth config."""

    silog_lambda: float = Field(0.85, ge=0, le=1, description="SILog lambda (official 0.85: Var + 0.15 mean^2).")
    gradient_weight: float = Field(0.0, ge=0, description="Weight of the multi-scale gradient loss (0: off).")


def silog_loss(pred: Tensor, target: Tensor, valid: Tensor, lam: float = 0.85) -> Tensor:
    """sqrt(mean(g^2) - lam * mean(g)^2) over the valid pixels; 0 (graph kept) when none is valid."""
    if not bool(valid.any()):
        return pred.sum() * 0.0
    g = torch.log(pred[valid].float() + EPS) - torch.log(target[valid].float() + EPS)
    value = (g * g).mean() - lam * g.mean() ** 2
    return torch.sqrt(value.clamp_min(1e-12))


def gradient_loss(pred: Tensor, target: Tensor, valid: Tensor, scales: int = 4) -> Tensor:
    """Mean absolute x/y difference of log-depth errors between valid neighbours, at `scales` halvings."""
    g = torch.log(pred.float() + EPS) - torch.log(target.float() + EPS)
    v = valid.float()
    total = pred.sum() * 0.0
    for _ in range(scales):
        for dim in (-1, -2):
            pair = v.narrow(dim, 1, v.shape[dim] - 1) * v.narrow(dim, 0, v.shape[dim] - 1)
            diff = (g.narrow(dim, 1, g.shape[dim] - 1) - g.narrow(dim, 0, g.shape[dim] - 1)).abs() * pair
            total = total + diff.sum() / pair.sum().clamp_min(1.0)
        if min(g.shape[-2:]) < 4:
            break
        g, v = F.avg_pool2d(g, 2), (F.avg_pool2d(v, 2) == 1).float()
    return total


class DepthLoss(nn.Module):
    """SILog (+ gradient_weight * gradient loss); pred and target (B, 1, H, W) or (B, H, W) in metres."""

    def __init__(self, cfg: DepthLossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DepthLossConfig()

    def forward(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        loss = silog_loss(pred, target, valid, self.cfg.silog_lambda)
        if self.cfg.gradient_weight > 0:
            shape = (pred.shape[0], 1, *pred.shape[-2:])
            loss = loss + self.cfg.gradient_weight * gradient_loss(
                pred.reshape(shape), target.reshape(shape), valid.reshape(shape)
            )
        return loss


__all__ = ["DepthLoss", "DepthLossConfig", "gradient_loss", "silog_loss"]
