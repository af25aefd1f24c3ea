"""Whole-image and sliding-window inference, flip / multi-scale test-time augmentation, mask files.

Sliding window (as mmsegmentation's `slide` mode): windows of `crop` pixels every `stride` pixels; the
last window of a row/column is shifted back to end at the border, so sizes that are not multiples of
the stride are covered without padding the image; overlapping logits are averaged. An image smaller
than the crop is one window of its own size. At most `window_batch` windows go through the model at a
time, so memory is bounded by the window, not the image (the (K, H, W) output aside).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dinotune.model.masks import default_colours, index_png, overlay, write_index_png
from dinotune.model.slide import InferenceConfig, window_starts

Model = Callable[[Tensor], Tensor]


@torch.no_grad()
def sliding_window(
    model: Model, images: Tensor, num_classes: int, crop: int, stride: int, window_batch: int = 4
) -> Tensor:
    """Averaged logits (B, K, H, W) of windows of `crop` pixels every `stride` pixels."""
    if stride > crop:
        raise ValueError(f"stride {stride} > crop {crop} would leave pixels unpredicted")
    b, _, h, w = images.shape
    ch, cw = min(crop, h), min(crop, w)
    boxes = [(y, x) for y in window_starts(h, ch, stride) for x in window_starts(w, cw, stride)]
    out = images.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = images.new_zeros((1, 1, h, w), dtype=torch.float32)
    for i in range(0, len(boxes), max(1, window_batch // b)):
        chunk = boxes[i : i + max(1, window_batch // b)]
        crops = torch.cat([images[..., y : y + ch, x : x + cw] for y, x in chunk])
        logits = model(crops).float()
        for j, (y, x) in enumerate(chunk):
            out[..., y : y + ch, x : x + cw] += logits[j * b : (j + 1) * b]
            count[..., y : y + ch, x : x + cw] += 1
    return out / count


def tta_average(
    model: Model,
    images: Tensor,
    channels: int,
    cfg: InferenceConfig,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The model's (B, channels, H, W) output averaged over `cfg`'s scales and flips (one pass or sliding windows
    each, resized back to H, W); `activation` (a softmax for class probabilities) is applied to each view first."""
    h, w = images.shape[-2:]
    total = images.new_zeros((images.shape[0], channels, h, w), dtype=torch.float32)
    views = 0
    for scale in cfg.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = images if scale == 1.0 else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True) if cfg.flip else (False,):
            x = scaled.flip(-1) if flip else scaled
            if cfg.mode == "whole":
                out = model(x).float()
            else:
                out = sliding_window(model, x, channels, cfg.crop, cfg.stride, cfg.window_batch)
            out = out.flip(-1) if flip else out
            if out.shape[-2:] != (h, w):
                out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
            total += activation(out) if activation is not None else out
            views += 1
    return total / views


@torch.no_grad()
def predict_probs(model: Model, images: Tensor, num_classes: int, cfg: InferenceConfig | None = None) -> Tensor:
    """Class probabilities (B, K, H, W), averaged over scales and flips (TTA)."""
    return tta_average(model, images, num_classes, cfg or InferenceConfig(), lambda logits: logits.softmax(dim=1))


__all__ = [
    "InferenceConfig",
    "default_colours",
    "index_png",
    "overlay",
    "predict_probs",
    "sliding_window",
    "tta_average",
    "window_starts",
    "write_index_png",
]
