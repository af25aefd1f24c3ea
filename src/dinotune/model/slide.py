"""Sliding-window inference without torch (ONNX Runtime exports), and what it shares with the torch
version in `dinotune.model.inference`: the `inference:` settings and the window grid.

`predict_probs` here is that module's `predict_probs` in numpy: the same windows, averaged logits, flips,
scales resampled by half-pixel bilinear without antialiasing (F.interpolate's, see
`dinotune.data.numpy_transforms.resize`), softmax per view, views averaged. tests/serve/test_slide.py
checks the two against each other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from dinotune.config import StrictModel
from dinotune.data.numpy_transforms import resize

ArrayModel = Callable[[np.ndarray], np.ndarray]  # NCHW images -> NKHW logits


class InferenceConfig(StrictModel):
    """The `inference:` section: how full-size images are predicted (final evaluation and predict)."""

    mode: str = Field("slide", pattern="^(slide|whole)$", description="slide (windows) or whole (one pass).")
    crop: int = Field(512, ge=1, description="slide: window side in pixels.")
    stride: int = Field(341, ge=1, description="slide: step between windows (crop * 2/3 is common).")
    flip: bool = Field(False, description="Also predict the horizontally flipped image and average.")
    scales: list[float] = Field(
        default_factory=lambda: [1.0],
        description="Multi-scale TTA factors, e.g. [0.75, 1.0, 1.25]; probabilities are averaged at the original size.",
    )
    window_batch: int = Field(4, ge=1, description="Windows per forward pass (memory bound).")


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets along one axis: every `stride`, the last shifted to end at `size`."""
    if size <= crop:
        return [0]
    n = (size - crop + stride - 1) // stride + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


def sliding_window(
    model: ArrayModel, images: np.ndarray, num_classes: int, crop: int, stride: int, window_batch: int = 4
) -> np.ndarray:
    """Averaged logits (B, K, H, W) of windows of `crop` pixels every `stride` pixels."""
    if stride > crop:
        raise ValueError(f"stride {stride} > crop {crop} would leave pixels unpredicted")
    b, _, h, w = images.shape
    ch, cw = min(crop, h), min(crop, w)
    boxes = [(y, x) for y in window_starts(h, ch, stride) for x in window_starts(w, cw, stride)]
    out = np.zeros((b, num_classes, h, w), np.float32)
    count = np.zeros((1, 1, h, w), np.float32)
    step = max(1, window_batch // b)
    for i in range(0, len(boxes), step):
        chunk = boxes[i : i + step]
        logits = model(np.concatenate([images[..., y : y + ch, x : x + cw] for y, x in chunk])).astype(np.float32)
        for j, (y, x) in enumerate(chunk):
            out[..., y : y + ch, x : x + cw] += logits[j * b : (j + 1) * b]
            count[..., y : y + ch, x : x + cw] += 1
    return out / count


def _resize_nchw(x: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.stack([resize(item.transpose(1, 2, 0), h, w).transpose(2, 0, 1) for item in x])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def tta_average(
    model: ArrayModel,
    images: np.ndarray,
    channels: int,
    cfg: InferenceConfig,
    activation: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """`dinotune.model.inference.tta_average` in numpy: the (B, channels, H, W) output averaged over scales
    and flips, `activation` (a softmax for class probabilities) applied to each view first."""
    h, w = images.shape[-2:]
    total = np.zeros((images.shape[0], channels, h, w), np.float32)
    views = 0
    for scale in cfg.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = images if scale == 1.0 else _resize_nchw(images, *size)
        for flip in (False, True) if cfg.flip else (False,):
            x = np.ascontiguousarray(scaled[..., ::-1]) if flip else scaled
            if cfg.mode == "whole":
                out = model(x).astype(np.float32)
            else:
                out = sliding_window(model, x, channels, cfg.crop, cfg.stride, cfg.window_batch)
            out = np.ascontiguousarray(out[..., ::-1]) if flip else out
            if out.shape[-2:] != (h, w):
                out = _resize_nchw(out, h, w)
            total += activation(out) if activation is not None else out
            views += 1
    return total / views


def predict_probs(
    model: ArrayModel, images: np.ndarray, num_classes: int, cfg: InferenceConfig | None = None
) -> np.ndarray:
    """Class probabilities (B, K, H, W), averaged over scales and flips (TTA)."""
    return tta_average(model, images, num_classes, cfg or InferenceConfig(), _softmax)


def predict_depth_array(model: ArrayModel, images: np.ndarray, cfg: InferenceConfig | None = None) -> np.ndarray:
    """Depth (B, 1, H, W) of NCHW float32 images: `dinotune.model.depther.predict_depth` without torch."""
    return tta_average(model, images, 1, cfg or InferenceConfig())
