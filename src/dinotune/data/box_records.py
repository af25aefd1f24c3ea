"""The records a detection dataset is described by, whatever its layout: `BoxSample`, `DetectionSpec`, and
`BoxProblem`, one finding of the readers (an error stops `load_detection`, a warning is fixed and logged)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class BoxSample:
    """One image and its objects: `boxes` float32 (N, 4) xyxy in pixels of the decoded original image
    (EXIF orientation applied), `labels` int64 (N,) contiguous class indices, `image_id` the COCO image id
    (YOLO: a running number over the sorted files). `width`/`height`: the image size the boxes were
    checked against (0 when unknown)."""

    path: Path
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int
    width: int = 0
    height: int = 0

    @property
    def num_boxes(self) -> int:
        return len(self.labels)


@dataclass
class DetectionSpec:
    """A detection dataset: contiguous `classes`, the original id of each (`category_ids`: COCO category id,
    YOLO class number), and the samples of each split ("train", "val", "test"; "all" before splitting)."""

    root: Path
    layout: str  # "coco" | "yolo"
    classes: list[str]
    category_ids: list[int]
    splits: dict[str, list[BoxSample]]
    auto_split: bool = False  # True when val was cut from train here (by seed)
    problems: list[BoxProblem] = field(default_factory=list)  # the readers' warnings (fixed on reading)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class BoxProblem:
    """One finding: `code` groups findings of a kind; `message` names the file (and line / annotation id)
    and says what to do about it."""

    severity: str  # "error" | "warning"
    code: str
    message: str
    file: Path | None = None


def empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def clip_box(box: list[float], width: int, height: int) -> tuple[list[float], bool]:
    """`box` (xyxy) clipped to the image when its size is known; True when it stuck out by more than half a
    pixel (annotation tools often round a border box half a pixel outside: clipped without a word)."""
    if width <= 0 or height <= 0:
        return box, False
    x0, y0, x1, y1 = box
    w, h = float(width), float(height)
    clipped = [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]
    return clipped, any(abs(a - b) > 0.5 for a, b in zip(clipped, box, strict=True))
