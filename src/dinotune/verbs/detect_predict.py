"""`dinotune predict DETECTOR IMAGES -o DIR`: boxes on new images, as a COCO-JSON file and drawings.

`DIR/predictions.json` is a COCO dataset (images with their sizes, the card's categories with their
original ids, one annotation per detection with its `score`), so it loads back as a COCO-JSON dataset
(e.g. to correct by hand and train again); `DIR/drawings/<stem>.png` shows each image with its boxes.
Boxes are in the original image's pixels. A run, model or export folder predicts alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinotune.atomic import make_dirs, write_text
from dinotune.data.decode import read_image
from dinotune.data.letterbox import LetterboxTransform
from dinotune.data.paths import expand_images
from dinotune.errors import DataError
from dinotune.model import load_model
from dinotune.model.nms import to_original
from dinotune.verbs.common import Result

log = logging.getLogger("dinotune")
PREDICTIONS_FILE = "predictions.json"


def detect_images(model_dir: str | Path, images: list[str | Path], batch_size: int = 16
                  ) -> tuple[Any, list[tuple[Path, np.ndarray, dict[str, np.ndarray]]]]:  # fmt: skip
    """(card, [(path, decoded image, detections in its pixels)]) for every readable image."""
    model, card = load_model(model_dir, device="cpu")
    prep = card.preprocessing
    letterbox = LetterboxTransform(prep.image_size, prep.mean, prep.std, prep.channels)
    loaded = []
    paths = expand_images(images)
    for path in paths:
        try:
            loaded.append((path, read_image(path, prep.channels, prep.scaling_config())))
        except DataError as err:
            log.warning("skipped %s", err)
    if not loaded:
        raise DataError(f"none of the {len(paths)} images could be read (first: {paths[0]}).")
    results = []
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start : start + batch_size]
        inputs = [letterbox(image) for _, image in chunk]
        with torch.inference_mode():
            found = model.predict(torch.from_numpy(np.stack([array for array, _ in inputs])))
        for (path, image), (_, scale), detections in zip(chunk, inputs, found, strict=True):
            numpy = {k: v.numpy() for k, v in detections.items()}
            results.append((path, image, to_original(numpy, scale, image.shape[0], image.shape[1])))
    return card, results


def coco_predictions(card: Any, results: list[tuple[Path, np.ndarray, dict[str, np.ndarray]]]) -> dict[str, Any]:
    """The detections as a COCO dataset: boxes as [x, y, width, height], categories with their own ids."""
    ids = card.head.get("category_ids") or card.head.get("source", {}).get("category_ids") or []
    ids = list(ids) if len(ids) == len(card.classes) else list(range(1, len(card.classes) + 1))
    images, annotations = [], []
    for image_id, (path, image, found) in enumerate(results, start=1):
        images.append({"id": image_id, "file_name": str(path), "height": int(image.shape[0]),
                       "width": int(image.shape[1])})  # fmt: skip
        for box, score, label in zip(found["boxes"], found["scores"], found["labels"], strict=True):
            x0, y0, x1, y1 = (round(float(v), 2) for v in box)
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(ids[label]),
                                "bbox": [x0, y0, w, h], "area": round(w * h, 2), "iscrowd": 0,
                                "score": round(float(score), 6)})  # fmt: skip
    categories = [{"id": int(i), "name": name} for i, name in zip(ids, card.classes, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def predict_boxes(model_dir: str | Path, images: list[str | Path], out: Path, *, draw: bool = True) -> Result:
    """Write `out/predictions.json` (and `out/drawings/`): see the module docstring."""
    card, results = detect_images(model_dir, images)
    out = Path(out)
    make_dirs(out)
    coco = coco_predictions(card, results)
    write_text(out / PREDICTIONS_FILE, json.dumps(coco, indent=1))
    if draw:
        from dinotune.evaluation.detect_draw import save_drawing

        for path, image, found in results:
            save_drawing(out / "drawings" / f"{path.stem}.png", image, found, card.classes)
    return Result(out, {"images": len(results), "detections": len(coco["annotations"])})
