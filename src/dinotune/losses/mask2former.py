"""Mask2Former's set-prediction loss: Hungarian matching, then class CE + mask BCE + mask Dice.

A semantic mask becomes one target per class present (label, binary mask). Each image's targets are
matched one-to-one to queries by `scipy.optimize.linear_sum_assignment` on the weighted sum of a class
cost (minus the matched class probability), a pixel-wise sigmoid BCE cost and a Dice cost; matched
queries learn their target's class and mask, the others learn "no object" (CE weight
`no_object_weight`). Masks are compared at the target's resolution on every pixel, or on `points`
random pixels per image (plain uniform sampling; the official recipe's importance sampling only pays
on large images). Ignored pixels count in neither. With class aggregation (an (N, K) 0/1 matrix), the
class terms use the user classes' summed probabilities, the rest of the mass being "no object".
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

EPS = 1e-8


def semantic_targets(masks: Tensor, ignore_index: int = 255) -> list[tuple[Tensor, Tensor]]:
    """(B, H, W) class maps -> per image (labels (n,), binary masks (n, H, W)), one per class present."""
    out = []
    for mask in masks:
        labels = torch.unique(mask[mask != ignore_index])
        out.append((labels.long(), (mask[None] == labels[:, None, None]).float()))
    return out


def class_log_probs(logits: Tensor, aggregation: Tensor | None = None) -> Tensor:
    """(B, Q, K+1) head logits -> (B, Q, N+1) log-probabilities of the (aggregated) classes + "no object"."""
    probs = logits.float().softmax(-1)
    if aggregation is None:
        return probs.clamp_min(EPS).log()
    user = probs[..., :-1] @ aggregation.to(probs).t()
    rest = (1 - user.sum(-1, keepdim=True)).clamp_min(0)
    return torch.cat([user, rest], -1).clamp_min(EPS).log()


def pairwise_bce(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Mean sigmoid BCE over valid pixels of every (prediction, target) pair: (Q, P), (n, P) -> (Q, n)."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none") * valid
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * valid
    return (pos @ targets.t() + neg @ (1 - targets).t()) / valid.sum().clamp_min(1)


def pairwise_dice(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """1 - soft Dice of every (prediction, target) pair over valid pixels: (Q, P), (n, P) -> (Q, n)."""
    probs = logits.sigmoid() * valid
    numerator = 2 * probs @ targets.t()
    return 1 - (numerator + 1) / (probs.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1)


def mask_pixels(pred: Tensor, target: Tensor, valid: Tensor, points: int, generator: torch.Generator | None):
    """Flatten (Q, h, w) predictions and (n, H, W) targets onto the same pixels: all target pixels
    (predictions resized bilinearly), or `points` random ones sampled from both when masks have more pixels."""
    if points <= 0 or points >= target.shape[-2] * target.shape[-1]:  # small masks: every pixel, exactly
        pred = F.interpolate(pred[None], size=target.shape[-2:], mode="bilinear", align_corners=False)[0]
        return pred.flatten(1), target.flatten(1), valid.flatten()[None]
    coords = torch.rand(1, 1, points, 2, generator=generator).to(pred.device) * 2 - 1

    def sample(x: Tensor, mode: str) -> Tensor:
        return F.grid_sample(x[None], coords, mode=mode, padding_mode="border", align_corners=False)[0, :, 0]

    return sample(pred, "bilinear"), sample(target, "nearest"), sample(valid[None].float(), "nearest")


class Mask2FormerLoss(nn.Module):
    """outputs (the head's dict) + (B, H, W) class maps -> the weighted set loss, summed over aux outputs."""

    def __init__(
        self,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        points: int = 0,
        aux: bool = True,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.weights = (class_weight, mask_weight, dice_weight)
        self.no_object_weight, self.points, self.aux, self.ignore_index = no_object_weight, points, aux, ignore_index

    @torch.no_grad()
    def match(self, logp: Tensor, pred_masks: Tensor, targets: list[tuple[Tensor, Tensor]], valid: Tensor, gen=None):
        """Per image (query indices, target indices) minimising class + BCE + Dice cost."""
        wc, wm, wd = self.weights
        out = []
        for b, (labels, masks) in enumerate(targets):
            if not len(labels):
                out.append((torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)))
                continue
            pred, tgt, ok = mask_pixels(pred_masks[b].float(), masks, valid[b], self.points, gen)
            cost = -wc * logp[b].exp()[:, labels] + wm * pairwise_bce(pred, tgt, ok) + wd * pairwise_dice(pred, tgt, ok)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return out

    def single(self, out: dict[str, Any], targets, valid: Tensor, aggregation: Tensor | None, gen=None) -> Tensor:
        """The loss of one prediction set (final or auxiliary)."""
        logits, pred_masks = out["pred_logits"], out["pred_masks"]
        logp = class_log_probs(logits, aggregation)
        n_classes = logp.shape[-1] - 1
        indices = self.match(logp, pred_masks, targets, valid, gen)
        target_classes = torch.full(logp.shape[:2], n_classes, dtype=torch.long, device=logp.device)
        class_weight = torch.ones(n_classes + 1, device=logp.device)
        class_weight[-1] = self.no_object_weight
        bce, dice, n_masks = logp.new_zeros(()), logp.new_zeros(()), 0
        for b, ((labels, masks), (rows, cols)) in enumerate(zip(targets, indices, strict=True)):
            if not len(rows):
                continue
            target_classes[b, rows.to(logp.device)] = labels[cols].to(logp.device)
            pred, tgt, ok = mask_pixels(pred_masks[b, rows].float(), masks[cols], valid[b], self.points, gen)
            per_pixel = F.binary_cross_entropy_with_logits(pred, tgt, reduction="none") * ok
            bce = bce + (per_pixel.sum(-1) / ok.sum().clamp_min(1)).sum()
            dice = dice + pairwise_dice(pred, tgt, ok).diagonal().sum()
            n_masks += len(rows)
        ce = F.nll_loss(logp.transpose(1, 2), target_classes, weight=class_weight)
        n = max(n_masks, 1)
        wc, wm, wd = self.weights
        return wc * ce + wm * bce / n + wd * dice / n

    def forward(
        self, outputs: dict[str, Any], masks: Tensor, aggregation: Tensor | None = None, generator=None
    ) -> Tensor:
        masks = masks.long()
        valid = (masks != self.ignore_index).float()
        targets = semantic_targets(masks, self.ignore_index)
        loss = self.single(outputs, targets, valid, aggregation, generator)
        for aux in outputs.get("aux_outputs", []) if self.aux else []:
            loss = loss + self.single(aux, targets, valid, aggregation, generator)
        return loss


__all__ = ["Mask2FormerLoss", "class_log_probs", "pairwise_bce", "pairwise_dice", "semantic_targets"]
