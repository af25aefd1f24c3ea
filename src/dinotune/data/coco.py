"""Write detections as COCO JSON, atomically: the "results" list every COCO tool scores against an annotation
file, and, for images that have no annotation file yet, a whole COCO dataset that `load_detection` reads back
(so predictions can be reviewed in an annotation tool and trained on).

Predictions, per image: `{"boxes": (M, 4) xyxy pixels of the original image, "scores": (M,), "labels": (M,)}`
(numpy or torch), labels contiguous 0..K-1; `category_ids[label]` is the id written (the dataset's own ids).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.atomic import atomic_path


def _numpy(value: Any, dtype: Any, shape: tuple[int, ...] = (-1,)) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


def _objects(prediction: dict[str, Any], category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO fields of one image's boxes: category id, bbox [x, y, width, height] (2 decimals), score."""
    boxes = _numpy(prediction["boxes"], np.float64, (-1, 4))
    scores, labels = _numpy(prediction["scores"], np.float64), _numpy(prediction["labels"], np.int64)
    return [
        {
            "category_id": int(category_ids[int(label)]),
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "score": round(float(score), 5),
        }
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels, strict=True)
    ]


def coco_results(
    image_ids: Sequence[int], predictions: Sequence[dict[str, Any]], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """The COCO results list: one `{image_id, category_id, bbox, score}` per predicted box."""
    if len(image_ids) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(image_ids)} image ids")
    return [
        {"image_id": int(image_id), **obj}
        for image_id, pred in zip(image_ids, predictions, strict=True)
        for obj in _objects(pred, category_ids)
    ]


def write_coco_results(
    path: Path | str, image_ids: Any, predictions: Sequence[dict[str, Any]], category_ids: Sequence[int]
) -> Path:
    """Write the results list to `path`. `image_ids`: the ids, or the BoxSamples of the split (their ids)."""
    ids = [getattr(item, "image_id", item) for item in image_ids]
    return _write(Path(path), coco_results(ids, predictions, category_ids))


def write_coco_dataset(
    path: Path | str,
    images: Sequence[tuple[str, int, int]],
    predictions: Sequence[dict[str, Any]],
    classes: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> Path:
    """A COCO dataset of predictions: `images` as (file_name, width, height), file names relative to the image
    folder. Each annotation keeps its `score`. Saved as `<image folder>/annotations/train.json` it loads back
    with `load_detection(<image folder>)`."""
    if len(images) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(images)} images")
    ids = list(category_ids) if category_ids is not None else list(range(1, len(classes) + 1))
    annotations = []
    for image_id, pred in enumerate(predictions, start=1):
        for obj in _objects(pred, ids):
            width, height = obj["bbox"][2], obj["bbox"][3]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    **obj,
                    "area": round(width * height, 2),
                    "iscrowd": 0,
                }
            )
    payload = {
        "images": [
            {"id": i, "file_name": name, "width": int(w), "height": int(h)}
            for i, (name, w, h) in enumerate(images, start=1)
        ],
        "annotations": annotations,
        "categories": [{"id": int(c), "name": str(n)} for c, n in zip(ids, classes, strict=True)],
    }
    return _write(Path(path), payload)


def _write(path: Path, payload: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload), encoding="utf-8")
    return path
