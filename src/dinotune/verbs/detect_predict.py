"""`dinotune predict DETECTOR IMAGES -o DIR`: boxes on new images, as a COCO-JSON file and drawings.

`DIR/predictions.json` is a COCO dataset (images with their sizes and paths relative to the images'
common folder, the card's categories with their original ids, one annotation per detection with its
`score`), so copied to `<that folder>/annotations/train.json` it loads back as a COCO-JSON dataset (e.g.
to correct by hand and train again); `DIR/drawings/<name>.png` shows each image with its boxes.
`dinotune evaluate` on a detector comes here too (`evaluate_detection_run`).
Boxes are in the original image's pixels. A run, model or export folder predicts alike.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinotune.atomic import atomic_path, make_dirs
from dinotune.data.decode import read_image
from dinotune.data.letterbox import LetterboxTransform
from dinotune.data.paths import expand_images
from dinotune.errors import DataError
from dinotune.model import load_model
from dinotune.model.nms import to_original
from dinotune.verbs.common import Result

log = logging.getLogger("dinotune")
PREDICTIONS_FILE = "predictions.json"
DRAW_THRESHOLD = 0.5  # boxes drawn (all of them are in predictions.json): evaluate_detections' default


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


def predict_boxes(model_dir: str | Path, images: list[str | Path], out: Path, *, draw: bool = True,
                  draw_threshold: float = DRAW_THRESHOLD) -> Result:  # fmt: skip
    """Write `out/predictions.json` (every detection) and `out/drawings/` (those scoring `draw_threshold` or
    more, as the evaluation's drawings): see the module docstring."""
    from dinotune.data.coco import write_coco_dataset
    from dinotune.report.boxes import draw_boxes

    card, results = detect_images(model_dir, images)
    out = Path(out)
    make_dirs(out)
    common = Path(os.path.commonpath([str(p.resolve().parent) for p, _, _ in results]))
    files = [(str(p.resolve().relative_to(common)), int(im.shape[1]), int(im.shape[0])) for p, im, _ in results]
    ids = card.head.get("category_ids") or card.head.get("source", {}).get("category_ids")
    write_coco_dataset(out / PREDICTIONS_FILE, files, [d for *_, d in results], card.classes, ids)
    if draw:
        for (_, image, found), (name, _, _) in zip(results, files, strict=True):
            target = out / "drawings" / Path(name).with_suffix(".png")
            make_dirs(target.parent)
            shown = {k: v[found["scores"] >= draw_threshold] for k, v in found.items()}
            with atomic_path(target) as tmp:
                draw_boxes(image, shown, card.classes).save(tmp, format="PNG")
    detections = sum(len(d["scores"]) for *_, d in results)
    log.info("%d boxes on %d images (image folder: %s)", detections, len(results), common)
    written = f": {detections} boxes on {len(results)} images ({PREDICTIONS_FILE}, drawings/)"
    return Result(
        out, {"images": len(results), "detections": detections, "image_root": str(common), "written": written}
    )


def evaluate_detection_run(run: Path, root: Path, split: str, out: Path) -> dict[str, Any]:
    """`dinotune evaluate` for a detector (run, model or export folder) on a COCO/YOLO dataset's `split`,
    split as the run split it when `root` is its own data (the seed and fraction of its config)."""
    from dinotune.data.boxes import load_detection
    from dinotune.data.detection_dataset import DetectionDataset, detection_transform
    from dinotune.evaluation.detect import evaluate_detections

    model, card = load_model(run, device="cpu")
    data = _recorded_data(run)
    spec = load_detection(
        root, split_seed=int(data.get("split_seed", 0)), val_fraction=float(data.get("val_fraction", 0.2))
    )
    samples = spec.splits.get(split)
    if not samples:
        found = ", ".join(k for k, v in spec.splits.items() if v)
        raise DataError(f"'{root}' has no '{split}' split with images (found: {found}); pass --split one of them.")
    if list(spec.classes) != list(card.classes):
        raise DataError(f"'{root}' has classes {spec.classes} but the model was trained on {card.classes}.")
    prep = card.preprocessing
    dataset = DetectionDataset(samples, detection_transform(False, prep.image_size, prep.mean, prep.std, prep.channels),
                               prep.channels, scaling=prep.scaling_config())  # fmt: skip
    title = f"Detection: {Path(run).resolve().name} on {split}"
    metrics = evaluate_detections(model.predict, dataset, card.classes, out, category_ids=spec.category_ids,
                                  backbone=card.backbone, title=title)  # fmt: skip
    return {**metrics, "summary": {f"{split}/{k}": metrics[k] for k in ("map", "map_50", "map_75")}}


def _recorded_data(run: Path) -> dict[str, Any]:
    """The `data:` section of the run's config.yaml ({} for a model or export folder without one)."""
    import yaml

    try:
        return dict(yaml.safe_load((Path(run) / "config.yaml").read_text())["data"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
