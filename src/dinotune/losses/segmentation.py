"""Segmentation losses: cross-entropy with an ignore label, soft Dice, and their sum; class weights.

Dice helps when foreground classes are small (a few pixels per image): cross-entropy alone is then
dominated by background. Both losses skip `ignore_index` pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from dinotune.config import StrictModel


class SegmentationLossConfig(StrictModel):
    """The `loss:` section of a segmentation config."""

    kind: Literal["ce", "dice", "ce_dice"] = Field("ce", description="ce, dice or ce_dice (their weighted sum).")
    dice_weight: float = Field(1.0, ge=0, description="ce_dice: weight of the Dice term.")
    class_weights: Literal["none", "inverse", "sqrt_inverse"] | list[float] = Field(
        "none",
        description="CE class weights: none, inverse / sqrt_inverse pixel frequency (train masks), "
        "or one value per class.",
    )


def dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int = 255, weight: Tensor | None = None, eps: float = 1.0
) -> Tensor:
    """1 - soft Dice per class, averaged over classes (weighted by `weight` if given); ignored pixels skipped."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    valid = (target != ignore_index).unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(target.clamp(0, num_classes - 1).long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    probs, onehot = probs * valid, onehot * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    per_class = 1 - (2 * inter + eps) / (denom + eps)
    if weight is None:
        return per_class.mean()
    weight = weight.to(per_class)
    return (per_class * weight).sum() / weight.sum().clamp_min(1e-12)


class SegmentationLoss(nn.Module):
    """CE (weighted, ignore_index), Dice, or CE + dice_weight * Dice; logits (B, K, H, W), target (B, H, W)."""

    def __init__(
        self, cfg: SegmentationLossConfig | None = None, class_weights: Tensor | None = None, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.cfg, self.ignore_index = cfg or SegmentationLossConfig(), ignore_index
        self.register_buffer("class_weights", class_weights.float() if class_weights is not None else None)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.long()
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.cfg.kind in ("ce", "ce_dice"):
            if (target != self.ignore_index).any():
                loss = loss + F.cross_entropy(
                    logits.float(), target, weight=self.class_weights, ignore_index=self.ignore_index
                )
            else:  # all pixels ignored: CE would be NaN (0 / 0); keep the graph with a zero
                loss = loss + logits.sum() * 0.0
        if self.cfg.kind in ("dice", "ce_dice"):
            scale = 1.0 if self.cfg.kind == "dice" else self.cfg.dice_weight
            loss = loss + scale * dice_loss(logits, target, self.ignore_index)
        return loss


def pixel_class_weights(
    masks: Iterable[Tensor], num_classes: int, ignore_index: int = 255, mode: str = "inverse"
) -> Tensor:
    """Inverse (or sqrt-inverse) pixel frequency, normalised to mean 1 over present classes (absent: 0)."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for mask in masks:
        m = mask.reshape(-1).long()
        m = m[(m != ignore_index) & (m >= 0) & (m < num_classes)]
        counts += torch.bincount(m, minlength=num_classes).double()
    present = counts > 0
    w = torch.zeros(num_classes, dtype=torch.float64)
    w[present] = 1.0 / counts[present]
    if mode == "sqrt_inverse":
        w = w.sqrt()
    if present.any():
        w[present] *= present.sum() / w[present].sum()
    return w.float()


__all__ = ["SegmentationLoss", "SegmentationLossConfig", "dice_loss", "pixel_class_weights"]
