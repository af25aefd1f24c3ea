"""Depth maps as files: 16-bit PNG with its scale in a sidecar JSON, or float32 TIFF in metres, and the
coloured preview (image | ground truth | prediction | error, depth panels on one shared colour scale)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dinotune.atomic import atomic_path, write_text

UINT16_MAX = 65535


def png_scale(scale: float, max_depth: float) -> float:
    """Metres per stored unit: the data's scale, coarser only when max_depth would not fit in 16 bits."""
    return max(scale, max_depth / UINT16_MAX)


def write_depth(path: Path, depth: np.ndarray, *, fmt: str = "png", scale: float = 0.001) -> Path:
    """`path` with suffix .png (uint16, metres = value * scale; `<stem>.json` beside it says so) or .tif
    (float32 metres). Returns the depth file written."""
    depth = np.asarray(depth, np.float32)
    if fmt == "tiff":
        import tifffile

        target = path.with_suffix(".tif")
        with atomic_path(target) as tmp:
            tifffile.imwrite(tmp, depth)
        return target
    from PIL import Image

    target = path.with_suffix(".png")
    stored = np.clip(np.round(np.nan_to_num(depth) / scale), 0, UINT16_MAX).astype(np.uint16)
    with atomic_path(target) as tmp:
        Image.fromarray(stored).save(tmp, format="PNG")
    sidecar = {
        "file": target.name,
        "unit": "m",
        "scale": scale,
        "rule": "metres = stored value * scale; 0 = none",
        "height": int(depth.shape[0]),
        "width": int(depth.shape[1]),
    }
    write_text(target.with_suffix(".json"), json.dumps(sidecar, indent=2))
    return target


def preview_png(
    path: Path,
    image: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    vrange: tuple[float, float] | None = None,
) -> None:
    """One PNG: the image, the ground truth (when given), the prediction and |error| (invalid pixels grey)."""
    from dinotune.report.depth_plots import depth_preview_figure
    from dinotune.report.plots import figure_png

    fig = depth_preview_figure(image, pred, target, valid, vrange)
    with atomic_path(path) as tmp:
        tmp.write_bytes(figure_png(fig, dpi=80))
