"""Detection fixtures shared by the tests of data/, metrics/, evaluation/ and the detection model: the
generated shapes dataset (exact boxes, COCO-JSON or YOLO-txt) and predictions built from its ground truth.
Helpers are imported from here by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dinotune.data.box_records import BoxSample
from dinotune.data.shapes import SHAPE_CLASSES, make_shapes_dataset, make_shapes_image

__all__ = ["SHAPE_CLASSES", "make_shapes_dataset", "make_shapes_image", "perfect_predictions", "shifted_predictions"]


def perfect_predictions(samples: list[BoxSample]) -> list[dict[str, np.ndarray]]:
    """The ground truth as predictions (score 1): every metric of it is perfect."""
    return [
        {"boxes": s.boxes.copy(), "scores": np.ones(s.num_boxes, np.float32), "labels": s.labels.copy()}
        for s in samples
    ]


def shifted_predictions(samples: list[BoxSample], shift: float, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The ground truth moved right by `shift` of each box's width, with random scores: a degraded predictor."""
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        boxes = s.boxes.copy()
        dx = (boxes[:, 2] - boxes[:, 0]) * shift
        boxes[:, 0] += dx
        boxes[:, 2] += dx
        out.append({"boxes": boxes, "scores": rng.uniform(0.1, 1, s.num_boxes).astype(np.float32), "labels": s.labels})
    return out


@pytest.fixture(scope="session")
def shapes_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small COCO shapes dataset (24 train, 8 val, 8 test images of 96 px), shared per session: read-only."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "coco", 24, 8, 8, layout="coco")
