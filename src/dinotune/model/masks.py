"""Mask files: the palette every segmenter's masks are shown in, index PNGs (what training reads back),
overlays. numpy and PIL only, so an ONNX server without torch writes the same masks."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from dinotune.atomic import atomic_path


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
