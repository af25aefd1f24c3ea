"""Segmentation metrics from one accumulated confusion matrix (rows: ground truth, columns: prediction).

Accumulating counts (instead of averaging per-image scores) is what the ADE20K / Cityscapes protocols
do: a large image weighs more than a small one, and the figure is independent of batch size.

Rules (documented in docs/segmentation.md):
- pixels whose ground truth is `ignore_index` are left out entirely, whatever was predicted there;
- IoU_c = TP / (TP + FP + FN); a class with TP + FP + FN == 0 (absent from both the ground truth and
  the prediction) has no IoU (None) and is left out of the mean IoU. A class absent from the ground
  truth but predicted somewhere has IoU 0 and counts (a false alarm is an error);
- accuracy_c = TP / (TP + FN) (recall); classes absent from the ground truth are left out of the mean
  class accuracy;
- pixel accuracy = trace / (all counted pixels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """(num_classes, num_classes) int64 counts; `pred`/`target` are integer tensors of any equal shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"mask value {int(target.max())} is outside 0..{num_classes - 1} (and not the ignore index {ignore_index})"
        )
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predicted class {int(pred.max())} is outside 0..{num_classes - 1}")
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(matrix: Tensor, class_names: list[str] | None = None) -> dict[str, Any]:
    """mIoU, per-class IoU (None when undefined), pixel accuracy, mean class accuracy; see module rules."""
    m = matrix.double().cpu()
    tp = m.diag()
    gt, predicted = m.sum(1), m.sum(0)
    union = gt + predicted - tp
    iou = [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(m.shape[0])]
    acc = [float(tp[c] / gt[c]) if gt[c] > 0 else None for c in range(m.shape[0])]
    valid_iou = [v for v in iou if v is not None]
    valid_acc = [v for v in acc if v is not None]
    total = float(m.sum())
    out: dict[str, Any] = {
        "miou": sum(valid_iou) / len(valid_iou) if valid_iou else 0.0,
        "pixel_accuracy": float(tp.sum()) / total if total else 0.0,
        "mean_class_accuracy": sum(valid_acc) / len(valid_acc) if valid_acc else 0.0,
        "iou": iou,
        "class_accuracy": acc,
        "pixels": int(total),
    }
    if class_names is not None:
        out["iou_by_class"] = dict(zip(class_names, iou, strict=True))
    return out


class ConfusionMeter:
    """Accumulates a confusion matrix over batches; `compute()` gives `scores(...)`."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> Tensor:
        """Add one batch (class indices, not logits); returns this batch's matrix."""
        batch = confusion_matrix(pred.detach().cpu(), target.detach().cpu(), self.num_classes, self.ignore_index)
        self.matrix += batch
        return batch

    def compute(self, class_names: list[str] | None = None) -> dict[str, Any]:
        return scores(self.matrix, class_names)


__all__ = ["ConfusionMeter", "confusion_matrix", "scores"]
