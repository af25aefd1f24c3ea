"""The evaluation transforms in numpy alone, for serving where torch, albumentations and OpenCV are absent.

`EvalTransform` reproduces `build_transform(train=False)` (resize crop / pad / keep, normalise, HWC -> CHW)
and `FullSizeTransform` reproduces `FullSize`; tests/data/test_numpy_transforms.py checks both against the
albumentations pipeline and `torch.nn.functional.interpolate` to 1e-5. The resampling rules are OpenCV's:

- linear (cv2.INTER_LINEAR, = F.interpolate(mode="bilinear", align_corners=False, antialias=False)): source
  coordinate (d + 0.5) * in / out - 0.5, clamped to the image, two taps per axis, no antialiasing;
- area (cv2.INTER_AREA, used by resize="keep" when shrinking): each output pixel averages the input pixels
  it covers, weighted by the covered fraction; on an axis that grows, OpenCV's area-upscale taps.

Each axis is one (out x in) weight matrix, applied as its few nonzero taps per output pixel (float32).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from dinotune.errors import ConfigError


def resolve_norm(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std arrays; 3-value (RGB backbone) statistics are averaged for 1 channel."""
    if mean is None or std is None:
        mean, std = [0.0] * channels, [1.0] * channels
    m, s = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if m.size == 3 and channels == 1:
        m, s = m.mean(keepdims=True), s.mean(keepdims=True)
    if m.size == 1 and channels > 1:
        m, s = np.repeat(m, channels), np.repeat(s, channels)
    if m.size != channels or s.size != channels:
        raise ConfigError(
            f"data.mean/std have {m.size}/{s.size} values but data.channels={channels}; give one per "
            "channel (run `dinotune data stats ROOT` to compute them)"
        )
    if np.any(s <= 0):
        raise ConfigError("data.std values must be positive")
    return m, s


def linear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-pixel bilinear taps without antialiasing, the border clamped: (out x 2) indices and weights."""
    src = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    frac = np.where(low >= size_in - 1, 0.0, src - low)
    index = np.stack([low, np.minimum(low + 1, size_in - 1)], 1)
    return index, np.stack([1.0 - frac, frac], 1).astype(np.float32)


def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """(out x in) weights of cv2.INTER_AREA shrinking one axis: the covered fraction of each input pixel."""
    scale = size_in / size_out
    weights = np.zeros((size_out, size_in))
    for d in range(size_out):
        start, stop = d * scale, d * scale + scale
        cell = min(scale, size_in - start)
        last = min(math.floor(stop), size_in - 1)
        first = min(math.ceil(start), last)
        if first - start > 1e-3:
            weights[d, first - 1] = (first - start) / cell
        weights[d, first:last] = 1.0 / cell
        if stop - last > 1e-3:
            weights[d, last] = min(stop - last, 1.0, cell) / cell
    return weights


def area_upscale_weights(size_in: int, size_out: int) -> np.ndarray:
    """(out x in) taps OpenCV uses for INTER_AREA when an axis does not shrink (two taps, area-shaped)."""
    scale, inverse = size_in / size_out, size_out / size_in
    weights = np.zeros((size_out, size_in))
    for d in range(size_out):
        s = math.floor(d * scale)
        frac = (d + 1) - (s + 1) * inverse
        frac = 0.0 if frac <= 0 else frac - math.floor(frac)
        if s >= size_in - 1:
            s, frac = size_in - 1, 0.0
        weights[d, s] += 1.0 - frac
        if frac:
            weights[d, s + 1] += frac
    return weights


def _taps(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (out x in) weight matrix as per-output taps: (out x T) input indices and float32 weights."""
    rows, cols = np.nonzero(weights)  # row-major: each row's columns in increasing order
    counts = np.bincount(rows, minlength=weights.shape[0])
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    index = np.zeros((weights.shape[0], max(1, int(counts.max()))), np.int64)
    taps = np.zeros(index.shape, np.float32)
    index[rows, slot], taps[rows, slot] = cols, weights[rows, cols]
    return index, taps


def _along(image: np.ndarray, taps: tuple[np.ndarray, np.ndarray], axis: int) -> np.ndarray:
    """Resample one axis by gathering its few taps (cost: output size x taps, not output x input)."""
    index, w = taps
    shape = [1] * image.ndim
    shape[axis] = index.shape[0]
    out = np.take(image, index[:, 0], axis=axis) * w[:, 0].reshape(shape)
    for t in range(1, index.shape[1]):
        out += np.take(image, index[:, t], axis=axis) * w[:, t].reshape(shape)
    return out


def resize(image: np.ndarray, height: int, width: int, area: bool = False) -> np.ndarray:
    """HxWxC float32 -> height x width x C, linear (default) or OpenCV's INTER_AREA."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if area and height <= h and width <= w:
        ty, tx = _taps(area_weights(h, height)), _taps(area_weights(w, width))
    elif area:
        ty, tx = _taps(area_upscale_weights(h, height)), _taps(area_upscale_weights(w, width))
    else:
        ty, tx = linear_taps(h, height), linear_taps(w, width)
    image = image.astype(np.float32, copy=False)
    return _along(_along(image, ty, 0), tx, 1)


def _pad_centre(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad to size x size, the extra split as albumentations' PadIfNeeded does (smaller half first)."""
    h, w = image.shape[:2]
    top, left = max(0, size - h) // 2, max(0, size - w) // 2
    pads = ((top, max(0, size - h) - top), (left, max(0, size - w) - left), (0, 0))
    return np.pad(image, pads) if any(p for pair in pads[:2] for p in pair) else image


class EvalTransform:
    """`image HxWxC float32 -> CHW float32`, exactly the eval pipeline of `build_transform` in numpy."""

    def __init__(
        self, image_size: int, resize_mode: str, mean: np.ndarray, std: np.ndarray, patch_size: int = 16
    ) -> None:
        if resize_mode not in ("crop", "pad", "keep"):
            raise ConfigError(f"unknown resize mode {resize_mode!r}; choose crop, pad or keep")
        self.size, self.mode, self.patch = image_size, resize_mode, patch_size
        self.mean, self.std = mean, std

    @classmethod
    def from_preprocessing(cls, prep, patch_size: int) -> EvalTransform:
        """From a model card's `Preprocessing` (image_size, resize, channels, mean, std)."""
        mean, std = resolve_norm(prep.mean, prep.std, prep.channels)
        return cls(prep.image_size, prep.resize, mean, std, patch_size)

    def geometry(self, image: np.ndarray) -> np.ndarray:
        """Resize (and crop or pad) without normalising."""
        h, w = image.shape[:2]
        if self.mode == "keep":
            f = self.size / max(h, w)
            th = max(self.patch, round(h * f / self.patch) * self.patch)
            tw = max(self.patch, round(w * f / self.patch) * self.patch)
            return resize(image, th, tw, area=f < 1)
        if self.mode == "pad":
            f = self.size / max(h, w)
            image = resize(image, max(1, round(h * f)), max(1, round(w * f)))
            return _pad_centre(image, self.size)
        f = self.size / min(h, w)
        image = resize(image, max(1, round(h * f)), max(1, round(w * f)))
        h, w = image.shape[:2]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return image[top : top + self.size, left : left + self.size]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = image[:, :, None] if image.ndim == 2 else image
        out = self.geometry(image.astype(np.float32, copy=False))
        out = (out - self.mean) / self.std
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


class FullSizeTransform:
    """Normalise only, keeping the image's own size (segmentation serving), as `FullSize` does."""

    def __init__(self, mean: Iterable[float], std: Iterable[float]) -> None:
        self.mean = np.asarray(list(mean), dtype=np.float32)
        self.std = np.asarray(list(std), dtype=np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = image[:, :, None] if image.ndim == 2 else image
        out = (image.astype(np.float32) - self.mean) / self.std
        return np.ascontiguousarray(out.transpose(2, 0, 1))
