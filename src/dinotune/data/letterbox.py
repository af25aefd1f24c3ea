"""Detection's evaluation input in numpy alone (torch-free serving of a detection export).

The letterbox: the longest side resized to `image_size` (OpenCV INTER_AREA when shrinking, bilinear
otherwise, on float32; sides rounded with Python's round), zeros padded at the bottom and right up to the square, then
normalised. `scale` = image_size / longest side maps boxes back: original = letterboxed / scale.
It equals the eval `detection_transform` of `dinotune.data.detection_dataset` (tests/data).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dinotune.data.numpy_transforms import resize, resolve_norm


def letterbox_geometry(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """HxWxC float32 -> (size x size x C resized and padded, scale)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    resized = resize(image, max(1, round(h * scale)), max(1, round(w * scale)), area=scale < 1)
    rh, rw = resized.shape[:2]
    out = np.pad(resized, ((0, size - rh), (0, size - rw), (0, 0))) if (rh, rw) != (size, size) else resized
    return out, scale


class LetterboxTransform:
    """`image HxWxC -> (CHW float32 input, scale)`, the detection model's evaluation input."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        self.size = image_size
        self.mean, self.std = resolve_norm(mean, std, channels)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        image = image[:, :, None] if image.ndim == 2 else image
        out, scale = letterbox_geometry(image.astype(np.float32, copy=False), self.size)
        out = (out - self.mean) / self.std
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), scale


class LetterboxTensor(LetterboxTransform):
    """The same as a training-style transform: `image -> {"image": CHW tensor, "scale": float}`
    (what `Preprocessing.load` returns for a detection card, `resize: letterbox`)."""

    def __call__(self, image: np.ndarray) -> dict:  # type: ignore[override]
        import torch

        array, scale = super().__call__(image)
        return {"image": torch.from_numpy(array), "scale": scale}
