"""Boxes drawn on an image with PIL, for the report and for `predict`: predictions as solid boxes in their
class colour with a "class score" tag, ground truth (optional) as thin dashed boxes in the same colour.

Small images are scaled up first (nearest neighbour, whole factors) so tags stay readable and pixels crisp.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, colour-blind-friendly first (Okabe-Ito), then Tableau's; repeats past 16 classes.
PALETTE = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
)


def class_colour(label: int) -> tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


def _font(size: int) -> Any:
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def to_rgb8(image: np.ndarray | Image.Image) -> Image.Image:
    """A PIL RGB image from HxW(xC) uint8 or float in [0, 1] (1 channel repeated, extra bands dropped)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    arr = np.repeat(arr[:, :, :1], 3, axis=2) if arr.shape[2] < 3 else arr[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], colour: tuple, width: int, dash: int) -> None:
    x0, y0, x1, y1 = box
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // dash))
        for i in range(0, steps, 2):
            t0, t1 = i / steps, min(1.0, (i + 1) / steps)
            draw.line(
                [(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)], colour, width
            )


def draw_boxes(
    image: np.ndarray | Image.Image,
    prediction: dict[str, Any] | None,
    classes: Sequence[str],
    truth: dict[str, Any] | None = None,
    min_size: int = 320,
) -> Image.Image:
    """`image` with `prediction` {"boxes", "scores", "labels"} drawn over it (and `truth` {"boxes", "labels"}
    dashed), boxes in the image's pixels. Returns a new RGB image, scaled up to at least `min_size` pixels."""
    canvas = to_rgb8(image)
    factor = max(1, int(np.ceil(min_size / max(1, max(canvas.size)))))
    if factor > 1:
        canvas = canvas.resize((canvas.width * factor, canvas.height * factor), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(canvas.size) / 250))
    font = _font(max(12, round(max(canvas.size) / 28)))
    if truth is not None:
        for box, label in zip(_rows(truth["boxes"]), _flat(truth["labels"]), strict=True):
            scaled = [v * factor for v in box]
            _dashed_rectangle(draw, [v + 1 for v in scaled], (0, 0, 0), line, 3 * line)  # a shadow: seen on any colour
            _dashed_rectangle(draw, scaled, class_colour(label), line, 3 * line)
    if prediction is not None:
        scores = _flat(prediction.get("scores", [None] * len(_flat(prediction["labels"]))))
        for box, label, score in zip(_rows(prediction["boxes"]), _flat(prediction["labels"]), scores, strict=True):
            _labelled_box(draw, [v * factor for v in box], int(label), score, classes, line, font)
    return canvas


def _labelled_box(draw, box, label: int, score, classes, line: int, font) -> None:
    colour = class_colour(label)
    draw.rectangle(box, outline=colour, width=line + 1)
    name = classes[label] if 0 <= label < len(classes) else str(label)
    text = name if score is None else f"{name} {float(score):.2f}"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x, y = box[0], box[1] - h if box[1] - h >= 0 else box[1]
    draw.rectangle([x, y, x + w, y + h], fill=colour)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    draw.text((x + 2 - left, y + 2 - top), text, fill=ink, font=font)


def _rows(values: Any) -> list[list[float]]:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1, 4).tolist()


def _flat(values: Any) -> list:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return list(np.asarray(values).reshape(-1).tolist()) if not isinstance(values, list) else values
