"""Whole-image and sliding-window inference, flip / multi-scale test-time augmentation, mask files.

Sliding window (as mmsegmentation's `slide` mode): windows of `crop` pixels every `stride` pixels; the
last window of a row/column is shifted back to end at the border, so sizes that are not multiples of
the stride are covered without padding the image; overlapping logits are averaged. An image smaller
than the crop is one window of its own size. At most `window_batch` windows go through the model at a
time, so memory is bounded by the window, not the image (the (K, H, W) output aside).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field
from torch import Tensor

from dinotune.atomic import atomic_path
from dinotune.config import StrictModel

Model = Callable[[Tensor], Tensor]


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


@torch.no_grad()
def predict_probs(model: Model, images: Tensor, num_classes: int, cfg: InferenceConfig | None = None) -> Tensor:
    """Class probabilities (B, K, H, W), averaged over scales and flips (TTA)."""
    cfg = cfg or InferenceConfig()
    h, w = images.shape[-2:]
    total = images.new_zeros((images.shape[0], num_classes, h, w), dtype=torch.float32)
    views = 0
    for scale in cfg.scales:
        scaled = (
            images
            if scale == 1.0
            else F.interpolate(
                images, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear", align_corners=False
            )
        )
        for flip in (False, True) if cfg.flip else (False,):
            x = scaled.flip(-1) if flip else scaled
            logits = (
                model(x).float()
                if cfg.mode == "whole"
                else sliding_window(model, x, num_classes, cfg.crop, cfg.stride, cfg.window_batch)
            )
            if flip:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total += logits.softmax(dim=1)
            views += 1
    return total / views


# --------------------------------------------------------------------------------------------------
# Mask files
# --------------------------------------------------------------------------------------------------


def default_colours(n: int) -> list[list[int]]:
    """The PASCAL VOC bit-interleaved palette: distinct, stable colours for any class count (0 = black)."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append([r, g, b])
    return colours


def index_png(mask: np.ndarray, colours: Iterable[Iterable[int]]) -> bytes:
    """An 8-bit palette PNG: pixel values are class indices (what training reads back), shown in colour."""
    flat = [int(v) for c in colours for v in c][: 256 * 3]
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(flat + [255, 255, 255] * (256 - len(flat) // 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_index_png(path: Path, mask: np.ndarray, colours: Iterable[Iterable[int]]) -> None:
    """`index_png` written atomically to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(index_png(mask, colours))


def overlay(
    image: np.ndarray, mask: np.ndarray, colours: list[list[int]], alpha: float = 0.5, ignore_index: int = 255
) -> np.ndarray:
    """HxWx3 uint8: the image (first 3 channels or grey) blended with the class colours."""
    img = image.astype(np.float32)
    img = np.repeat(img[..., :1], 3, axis=2) if img.ndim == 3 and img.shape[2] < 3 else img[..., :3]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.max() <= 1.0:
        img = img * 255.0
    palette = np.asarray(colours, dtype=np.float32).reshape(-1, 3)
    valid = (mask != ignore_index) & (mask < len(palette))
    out = img.copy()
    out[valid] = (1 - alpha) * img[valid] + alpha * palette[mask[valid]]
    return out.clip(0, 255).astype(np.uint8)


__all__ = [
    "InferenceConfig",
    "default_colours",
    "index_png",
    "overlay",
    "predict_probs",
    "sliding_window",
    "window_starts",
    "write_index_png",
]
