"""A generated detection dataset with exact boxes: filled squares, discs and triangles on a noisy textured
background, written as COCO-JSON or YOLO-txt. Tests, docs and benchmarks train on it without downloads.

Each box is the bounding box of its shape's drawn pixels (so shapes cut by the image border get the box of
what is visible); shapes never overlap, so no box hides another's pixels. Colours differ per class, with
a little jitter, and sizes range from small (8 px) to a third of the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dinotune.data.bundled import _atomic_build

SHAPE_CLASSES = ("square", "disc", "triangle")
_COLOURS = {"square": (220, 60, 50), "disc": (60, 200, 80), "triangle": (70, 90, 230)}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth blotches (upsampled coarse noise) plus pixel noise, grey-brown, float in [0, 255]."""
    coarse = rng.uniform(60, 170, (size // 8 + 2, size // 8 + 2, 1)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(coarse[:, :, 0].astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32
    )
    tint = np.array([1.0, 0.95, 0.85], np.float32)
    return np.clip(smooth[:, :, None] * tint + rng.normal(0, 12, (size, size, 3)), 0, 255)


def _shape_mask(kind: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=255)
    return np.asarray(canvas) > 0


def make_shapes_image(
    rng: np.random.Generator, size: int = 96, classes: tuple[str, ...] = SHAPE_CLASSES
) -> tuple[np.ndarray, list[list[float]], list[int]]:
    """One uint8 HxWx3 image, its xyxy pixel boxes and class indices (1 to 4 shapes, none overlapping)."""
    image = _background(rng, size)
    taken = np.zeros((size, size), bool)
    boxes: list[list[float]] = []
    labels: list[int] = []
    wanted = int(rng.integers(1, 5))
    for _ in range(60):  # rejection sampling until `wanted` shapes fit without touching each other
        if len(boxes) == wanted:
            break
        label = int(rng.integers(len(classes)))
        r = float(rng.uniform(4, size / 6))
        cx, cy = (float(v) for v in rng.uniform(-r / 2, size + r / 2, 2))  # some cut by the border
        mask = _shape_mask(classes[label], cx, cy, r, size)
        if mask.sum() < 12 or (mask & _grown(taken)).any():
            continue
        taken |= mask
        colour = np.asarray(_COLOURS[classes[label]], np.float32) + rng.normal(0, 10, 3)
        image[mask] = np.clip(colour + rng.normal(0, 6, (int(mask.sum()), 3)), 0, 255)
        ys, xs = np.nonzero(mask)
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
        labels.append(label)
    return image.astype(np.uint8), boxes, labels


def _grown(mask: np.ndarray) -> np.ndarray:
    """`mask` dilated by one pixel, so shapes keep a gap and their boxes stay exact."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= out[:, :-1].copy()
    out[:, :-1] |= out[:, 1:].copy()
    return out


def make_shapes_dataset(
    root: Path | str,
    n_train: int = 48,
    n_val: int = 16,
    n_test: int = 16,
    layout: str = "coco",
    size: int = 96,
    seed: int = 0,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> Path:
    """Write the shapes dataset under `root` in `layout` ("coco" or "yolo"); a split of 0 images is not
    written (no val: training cuts one from train). COCO category ids start at 1, image ids run over all splits.
    Built in a temporary sibling and renamed into place, as the bundled datasets are: calling again with the same
    arguments is a no-op, and a folder dinotune did not write is never overwritten."""
    if layout not in ("coco", "yolo"):
        raise ValueError(f"layout must be 'coco' or 'yolo', got {layout!r}")
    params = {"name": "shapes", "splits": [n_train, n_val, n_test], "layout": layout, "size": size, "seed": seed}
    params["classes"] = list(classes)
    return _atomic_build(
        Path(root), params, lambda tmp: _build(tmp, n_train, n_val, n_test, layout, size, seed, classes)
    )


def _build(
    root: Path, n_train: int, n_val: int, n_test: int, layout: str, size: int, seed: int, classes: tuple[str, ...]
) -> None:
    rng = np.random.default_rng(seed)
    image_id = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n <= 0:
            continue
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            image_id += 1
            pixels, boxes, labels = make_shapes_image(rng, size, classes)
            name = f"{split}_{i:04d}.png"
            Image.fromarray(pixels).save(root / "images" / split / name)
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            for box, label in zip(boxes, labels, strict=True):
                annotations.append((image_id, name, box, label))
        _write_split(root, split, layout, images, annotations, size, classes)
    if layout == "yolo":
        (root / "data.yaml").write_text("names:\n" + "".join(f"  - {c}\n" for c in classes), encoding="utf-8")


def _write_split(
    root: Path, split: str, layout: str, images: list[dict], annotations: list[tuple], size: int, classes: tuple
) -> None:
    if layout == "coco":
        coco = {
            "images": images,
            "annotations": [
                {
                    "id": n + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
                for n, (image_id, _, (x0, y0, x1, y1), label) in enumerate(annotations)
            ],
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
        }
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco), encoding="utf-8")
        return
    folder = root / "labels" / split
    folder.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {img["file_name"]: [] for img in images}
    for _, name, (x0, y0, x1, y1), label in annotations:
        cx, cy, w, h = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size
        lines[name].append(f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    for name, rows in lines.items():
        (folder / Path(name).with_suffix(".txt")).write_text("".join(r + "\n" for r in rows), encoding="utf-8")
