"""Depth metrics (Eigen et al.; the NYU-v2 / KITTI convention): computed per image on its valid pixels,
then averaged over images (every image weighs the same, whatever its number of valid pixels).

With d the prediction and d* the ground truth over an image's valid pixels (n of them):
- AbsRel = mean(|d - d*| / d*); SqRel = mean((d - d*)^2 / d*)
- RMSE = sqrt(mean((d - d*)^2)); RMSE-log = sqrt(mean((ln d - ln d*)^2))
- log10 = mean(|log10 d - log10 d*|)
- delta_k = share of pixels with max(d / d*, d* / d) < 1.25^k, k = 1, 2, 3
Predictions are clamped to [min_depth, max_depth] first, as the protocol does. An image without a
valid pixel is left out (and counted under `images_skipped`). Lower is better for the errors, higher
for the deltas (`DIRECTIONS`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

NAMES = ("absrel", "sqrel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")
DIRECTIONS = {name: "max" if name.startswith("delta") else "min" for name in NAMES}


def image_metrics(pred: Tensor, target: Tensor, valid: Tensor, min_depth: float, max_depth: float) -> Tensor | None:
    """The 8 metrics of one image (float64, in `NAMES` order), or None without a valid pixel."""
    keep = valid.reshape(-1).bool()
    if not bool(keep.any()):
        return None
    d = pred.reshape(-1)[keep].double().clamp(min_depth, max_depth)
    g = target.reshape(-1)[keep].double()
    err = d - g
    ratio = torch.maximum(d / g, g / d)
    return torch.stack(
        [
            (err.abs() / g).mean(),
            (err**2 / g).mean(),
            (err**2).mean().sqrt(),
            ((d.log() - g.log()) ** 2).mean().sqrt(),
            (d.log10() - g.log10()).abs().mean(),
            *((ratio < 1.25**k).double().mean() for k in (1, 2, 3)),
        ]
    )


class DepthMeter:
    """Sums of per-image metrics over a dataset; `compute()` gives their means."""

    def __init__(self, min_depth: float, max_depth: float) -> None:
        self.min_depth, self.max_depth = min_depth, max_depth
        self.sums = torch.zeros(len(NAMES), dtype=torch.float64)
        self.images = 0
        self.skipped = 0

    def update(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor | None:
        """Add a batch (B, [1,] H, W); returns the last image's metrics (None if it had no valid pixel)."""
        last = None
        for p, t, v in zip(pred.detach().cpu(), target.detach().cpu(), valid.detach().cpu(), strict=True):
            last = image_metrics(p, t, v, self.min_depth, self.max_depth)
            if last is None:
                self.skipped += 1
            else:
                self.sums += last
                self.images += 1
        return last

    def compute(self) -> dict[str, Any]:
        values = (self.sums / max(1, self.images)).tolist()
        return {**dict(zip(NAMES, values, strict=True)), "images": self.images, "images_skipped": self.skipped}


def as_dict(values: Tensor) -> dict[str, float]:
    return dict(zip(NAMES, (float(v) for v in values), strict=True))


__all__ = ["DIRECTIONS", "NAMES", "DepthMeter", "as_dict", "image_metrics"]
