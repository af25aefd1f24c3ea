"""Scenes larger than the model input: tiled segmentation and classification, georeferencing kept.

Segmentation runs block by block with the card's own inference (sliding window by default, the ADE20K
protocol): each block of `block` pixels is read together with every window of the whole-scene window
grid that overlaps it, and only its core is kept. The core's logits are then those of a whole-image
pass - same windows, same averaging, no seams - while memory is bounded by the block (K x (block +
2 crop)^2 probabilities), not by the scene. (Multi-scale TTA rescales each block, not the scene: close,
not identical.) A scene no larger than one block is one whole-image pass.

Classification and embedding cut the scene into `tile`-pixel tiles every `stride` pixels (the last tile
of a row or column shifted back to end at the border, as sliding windows are), each preprocessed as a
training image was; every tile keeps its pixel box and, for a georeferenced scene, the map coordinates
of its centre in the scene's CRS.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinotune.atomic import atomic_path, write_text
from dinotune.data.raster import Scene
from dinotune.data.transforms import FullSize
from dinotune.device import autocast
from dinotune.model import ModelCard, model_device
from dinotune.model.inference import InferenceConfig, predict_probs, window_starts

DEFAULT_BLOCK = 2048


def blocks(height: int, width: int, block: int) -> Iterator[tuple[int, int, int, int]]:
    """Core boxes (row, col, height, width) of `block` pixels covering the scene, row by row."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield row, col, min(block, height - row), min(block, width - col)


def block_span(start: int, end: int, size: int, cfg: InferenceConfig) -> tuple[int, int]:
    """The pixels [lo, hi) to read for the core [start, end) along one axis of `size` pixels.

    Sliding window: exactly the windows of the whole-scene grid that overlap the core, so the core's
    logits are the whole-image pass's (the same windows, averaged the same way). Whole-image
    inference: the core alone.
    """
    if cfg.mode != "slide":
        return start, end
    crop = min(cfg.crop, size)
    starts = [s for s in window_starts(size, crop, cfg.stride) if s < end and s + crop > start]
    return starts[0], starts[-1] + crop


@torch.no_grad()
def segment_scene(
    model: Any, card: ModelCard, scene: Scene, cfg: InferenceConfig | None = None, block: int = DEFAULT_BLOCK
) -> np.ndarray:
    """HxW class indices of the whole scene, predicted block by block (see the module docstring)."""
    cfg = cfg or InferenceConfig(**card.inference)
    transform = FullSize(card.preprocessing.mean, card.preprocessing.std)
    device = model_device(model)
    mask = np.zeros((scene.height, scene.width), dtype=np.uint8 if len(card.classes) <= 256 else np.uint16)
    for row, col, h, w in blocks(scene.height, scene.width, block):
        top, bottom = block_span(row, row + h, scene.height, cfg)
        left, right = block_span(col, col + w, scene.width, cfg)
        image = transform(scene.read(top, left, bottom - top, right - left))["image"][None].to(device)
        probs = predict_probs(model, image, len(card.classes), cfg)  # fp32, as evaluation predicts
        pred = probs.argmax(1)[0].cpu().numpy()
        mask[row : row + h, col : col + w] = pred[row - top : row - top + h, col - left : col - left + w]
    return mask


@dataclass
class Tiles:
    """Per-tile results of one scene: pixel boxes (row, col, height, width), probabilities, embeddings."""

    scene: Scene
    tile: int
    stride: int
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)

    def centre(self, i: int) -> tuple[float, float] | None:
        """Map coordinates of tile `i`'s centre; None for a scene without georeferencing."""
        if self.scene.georef is None:
            return None
        row, col, h, w = self.boxes[i]
        return self.scene.georef.xy(col + w / 2, row + h / 2)


def tile_boxes(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(row, col, height, width) of every tile; a scene smaller than a tile is one tile of its own size."""
    th, tw = min(tile, height), min(tile, width)
    return [(r, c, th, tw) for r in window_starts(height, th, stride) for c in window_starts(width, tw, stride)]


@torch.no_grad()
def classify_scene(
    model: Any, card: ModelCard, scene: Scene, tile: int, stride: int | None = None, batch_size: int = 32
) -> Tiles:
    """Probabilities and embeddings (the normed class token) of every tile of `scene`."""
    stride = stride or tile
    transform = card.preprocessing.transform(model.input_multiple)
    device = model_device(model)
    out = Tiles(scene, tile, stride, tile_boxes(scene.height, scene.width, tile, stride))
    for start in range(0, len(out.boxes), batch_size):
        chunk = out.boxes[start : start + batch_size]
        batch = torch.stack([transform(scene.read(*box))["image"] for box in chunk]).to(device)
        with autocast(device):
            logits, embedding = model.logits_and_embedding(batch)
        logits = logits.float().cpu()
        probs = torch.sigmoid(logits) if card.multilabel else logits.softmax(1)
        out.probs.extend(probs.numpy())
        out.embeddings.extend(embedding.float().cpu().numpy())
    return out


def write_tiles(path: Path, tiles: Tiles, classes: list[str], embeddings: bool = False) -> Path:
    """`path` (CSV): one row per tile - its pixel box, the map coordinates of its centre, the predicted
    label, one probability per class (and the embedding with `embeddings`); beside it `<stem>.json` with
    the scene's size, CRS and transform. Returns the JSON's path."""
    dim = len(tiles.embeddings[0]) if embeddings and tiles.embeddings else 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tile", "row", "col", "height", "width", "x", "y", "predicted", "probability",
                         *[f"p_{c}" for c in classes], *[f"e_{j}" for j in range(dim)]])  # fmt: skip
        for i, (box, probs) in enumerate(zip(tiles.boxes, tiles.probs, strict=True)):
            xy = tiles.centre(i)
            extra = [f"{v:.6g}" for v in tiles.embeddings[i]] if dim else []
            writer.writerow([i, *box, *(("", "") if xy is None else (f"{xy[0]:.6f}", f"{xy[1]:.6f}")),
                             classes[int(probs.argmax())], f"{probs.max():.6f}", *[f"{p:.6f}" for p in probs],
                             *extra])  # fmt: skip
    georef = tiles.scene.georef
    meta = {
        "file": str(tiles.scene.path),
        "height": tiles.scene.height,
        "width": tiles.scene.width,
        "tile": tiles.tile,
        "stride": tiles.stride,
        "tiles": len(tiles.boxes),
        "crs": georef.crs if georef else None,
        "transform": list(georef.transform) if georef else None,
        "coordinates": "x, y: map coordinates of each tile's centre in `crs`" if georef else "none (no georeferencing)",
        "classes": classes,
    }
    sidecar = path.with_suffix(".json")
    write_text(sidecar, json.dumps(meta, indent=2))
    return sidecar


__all__ = ["DEFAULT_BLOCK", "Tiles", "blocks", "classify_scene", "segment_scene", "tile_boxes", "write_tiles"]
