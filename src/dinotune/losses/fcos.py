"""FCOS training targets and losses, written here because torchvision does not import beside this torch.

Target assignment (Tian et al. 2019, with centre sampling): a position is positive for a box when it
lies inside the box and within `center_radius` strides of the box centre, and when its largest
distance to the box sides falls in its level's size range (`range_factor` x stride up to twice that;
the finest level from 0, the coarsest to infinity), so small boxes go to fine levels and large ones
to coarse levels. A position claimed by several boxes takes the smallest.

Losses, each normalised by the number of positives: sigmoid focal loss over every position and class,
GIoU loss of the positives' boxes weighted by their centerness target, and binary cross-entropy of
the centerness logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from dinotune.config import StrictModel

INF = 1e8


class FCOSLossConfig(StrictModel):
    """The `loss:` section of a detection config."""

    center_radius: float = Field(1.5, gt=0, description="Centre sampling radius, in strides of the level.")
    range_factor: float = Field(4.0, gt=0, description="Level size ranges: [f x stride, 2f x stride).")
    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    box_weight: float = Field(1.0, ge=0, description="Weight of the GIoU term.")


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017) of sigmoid logits against 0/1 targets (not reduced)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def generalized_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of aligned xyxy boxes a[i], b[i] (N, 4) -> (N,) (Rezatofighi et al. 2019)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def size_ranges(strides: Tensor, all_strides: list[int], factor: float) -> Tensor:
    """(L, 2) allowed [low, high) of a position's largest side distance, from its level's stride."""
    low = strides * factor
    high = low * 2
    low = torch.where(strides == min(all_strides), torch.zeros_like(low), low)
    high = torch.where(strides == max(all_strides), torch.full_like(high, INF), high)
    return torch.stack([low, high], 1)


def assign(points: Tensor, boxes: Tensor, labels: Tensor, ranges: Tensor, radius: float, num_classes: int
           ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One image: per position (L, 3: x, y, stride) its class (num_classes: background) and box (L, 4)."""
    n_points = points.shape[0]
    if not len(boxes):
        return torch.full((n_points,), num_classes, dtype=torch.long, device=points.device), points.new_zeros(
            n_points, 4
        )
    x, y, stride = points[:, 0:1], points[:, 1:2], points[:, 2:3]
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], 2)  # (L, N, 4)
    inside = ltrb.min(2).values > 0
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    reach = stride * radius
    near = ((x - cx).abs() < reach) & ((y - cy).abs() < reach)
    largest = ltrb.max(2).values
    in_range = (largest >= ranges[:, 0:1]) & (largest < ranges[:, 1:2])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(n_points, -1)
    area = torch.where(inside & near & in_range, area, torch.full_like(area, INF))
    smallest, which = area.min(1)
    classes = torch.where(smallest < INF, labels[which], torch.full_like(which, num_classes))
    return classes, boxes[which]


def centerness_target(points: Tensor, boxes: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) x min(t, b) / max(t, b)) of positions inside their boxes."""
    x, y = points[:, 0], points[:, 1]
    left, top, right, bottom = x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y
    lr = torch.min(left, right) / torch.max(left, right).clamp(min=1e-7)
    tb = torch.min(top, bottom) / torch.max(top, bottom).clamp(min=1e-7)
    return (lr.clamp(min=0) * tb.clamp(min=0)).sqrt()


class FCOSLoss:
    """Raw head outputs + ground truth of a batch -> {"loss", "cls", "box", "centerness"}."""

    def __init__(self, num_classes: int, strides: list[int], cfg: FCOSLossConfig | None = None) -> None:
        self.num_classes, self.strides, self.cfg = num_classes, list(strides), cfg or FCOSLossConfig()

    def targets(self, points: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> tuple[Tensor, Tensor]:
        ranges = size_ranges(points[:, 2], self.strides, self.cfg.range_factor)
        radius, k = self.cfg.center_radius, self.num_classes
        pairs = [assign(points, b.to(points), c.to(points.device).long(), ranges, radius, k)
                 for b, c in zip(boxes, labels, strict=True)]  # fmt: skip
        return torch.stack([c for c, _ in pairs]), torch.stack([b for _, b in pairs])

    def __call__(self, outputs: tuple[Tensor, Tensor, Tensor], points: Tensor, boxes: list[Tensor],
                 labels: list[Tensor]) -> dict[str, Tensor]:  # fmt: skip
        logits, distances, centerness = outputs
        classes, target_boxes = self.targets(points, boxes, labels)
        positive = classes < self.num_classes
        n_pos = positive.sum().clamp(min=1).float()
        onehot = F.one_hot(classes, self.num_classes + 1)[..., : self.num_classes].to(logits.dtype)
        cfg = self.cfg
        cls = sigmoid_focal_loss(logits, onehot, cfg.focal_alpha, cfg.focal_gamma).sum() / n_pos
        if not bool(positive.any()):
            zero = distances.sum() * 0 + centerness.sum() * 0
            return {"loss": cls + zero, "cls": cls.detach(), "box": zero.detach(), "centerness": zero.detach()}
        where = positive.nonzero(as_tuple=True)
        pos_points = points[where[1]]
        predicted = torch.cat(
            [pos_points[:, :2] - distances[where][:, :2], pos_points[:, :2] + distances[where][:, 2:]], 1
        )
        truth = target_boxes[where]
        weight = centerness_target(pos_points, truth)
        box = ((1 - generalized_iou(predicted, truth)) * weight).sum() / weight.sum().clamp(min=1e-6)
        ctr = F.binary_cross_entropy_with_logits(centerness[where], weight, reduction="sum") / n_pos
        loss = cls + cfg.box_weight * box + ctr
        return {"loss": loss, "cls": cls.detach(), "box": box.detach(), "centerness": ctr.detach()}
