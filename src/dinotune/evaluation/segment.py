"""Segmentation at full size: metrics over a dataset, index-PNG masks and overlays, for a run or an export.

Every image is predicted at its own size with the card's inference settings (sliding window by
default), as the ADE20K protocol does; `model` is a `Segmenter` or its ONNX Runtime twin.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dinotune.atomic import atomic_path
from dinotune.data.datasets import SegmentationDataset
from dinotune.data.decode import read_image
from dinotune.data.paths import expand_images
from dinotune.data.raster import open_scene, write_mask
from dinotune.data.transforms import FullSize
from dinotune.errors import DataError
from dinotune.evaluation.predict import load_run_dataset
from dinotune.evaluation.segment_report import write_segmentation_report
from dinotune.evaluation.tiles import DEFAULT_BLOCK, segment_scene
from dinotune.metrics import confusion_matrix, scores
from dinotune.model import load_model, model_device
from dinotune.model.inference import InferenceConfig, overlay, predict_probs, write_index_png
from dinotune.run_folder import recorded_mode, write_json


@torch.no_grad()
def evaluate_segmenter(
    model: Any,
    dataset: SegmentationDataset,
    classes: list[str],
    colours: list[list[int]],
    inference: InferenceConfig,
    ignore_index: int = 255,
    out: Path | None = None,
    csv_path: Path | None = None,
) -> dict[str, Any]:
    """Full-size metrics of `model` on `dataset` (one image at a time); optional masks/overlays/CSV."""
    n = len(classes)
    device = model_device(model)
    total = torch.zeros(n, n, dtype=torch.long)
    rows = []
    for item in DataLoader(dataset, batch_size=1, shuffle=False):
        probs = predict_probs(model, item["image"].to(device), n, inference)
        pred = probs.argmax(1)[0].cpu()
        cm = confusion_matrix(pred, item["mask"][0], n, ignore_index)
        total += cm
        path = Path(item["path"][0])
        per = scores(cm)
        rows.append(
            [
                str(path),
                f"{per['miou']:.6f}",
                f"{per['pixel_accuracy']:.6f}",
                *("" if v is None else f"{v:.6f}" for v in per["iou"]),
            ]
        )
        if out is not None:
            write_index_png(out / "masks" / f"{path.stem}.png", pred.numpy(), colours)
            image = read_image(path, dataset.channels, dataset.scaling, dataset.max_pixels)
            _save_rgb(out / "overlays" / f"{path.stem}.png", overlay(image, pred.numpy(), colours, 0.5, ignore_index))
    if csv_path is not None:
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "miou", "pixel_accuracy", *[f"iou_{c}" for c in classes]])
            writer.writerows(rows)
    result = scores(total, classes)
    result["confusion_matrix"] = total.tolist()
    result["images"] = len(rows)
    return result


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


@torch.no_grad()
def predict_masks(
    model_dir: str | Path,
    images: Iterable[str | Path],
    out: str | Path,
    inference: InferenceConfig | None = None,
    device: str | None = None,
    overlays: bool = True,
    block: int = DEFAULT_BLOCK,
) -> list[Path]:
    """Masks under out/masks/ and overlays under out/overlays/ for image files or folders.

    A georeferenced TIFF gives a GeoTIFF mask (`<stem>.tif`, the input's CRS and transform), any other
    image an index PNG. Scenes larger than `block` pixels are predicted block by block
    (`dinotune.evaluation.tiles`) and get no overlay (it would be as large as the scene).
    """
    model, card = load_model(model_dir, device)
    if card.task != "segment":
        raise DataError(f"'{model_dir}' is a {card.task} model; masks need a segmentation model.")
    cfg = inference or InferenceConfig(**card.inference)
    prep = card.preprocessing
    out, written = Path(out), []
    for path in expand_images(list(images)):
        with open_scene(path, prep.channels, prep.scaling_config()) as scene:
            pred = segment_scene(model, card, scene, cfg, block)
            if scene.georef is not None:
                target = out / "masks" / f"{path.stem}.tif"
                write_mask(target, pred, card.colours, scene.georef)
            else:
                target = out / "masks" / f"{path.stem}.png"
                write_index_png(target, pred, card.colours)
            if overlays and max(scene.height, scene.width) <= block:
                image = scene.read(0, 0, scene.height, scene.width)
                _save_rgb(
                    out / "overlays" / f"{path.stem}.png", overlay(image, pred, card.colours, 0.5, card.ignore_index)
                )
        written.append(target)
    return written


def evaluate_segmentation(
    run: str | Path, root: str | Path, *, split: str = "test", out: Path, device: str | None = None
) -> dict[str, Any]:
    """mIoU, per-class IoU and the confusion matrix of the model in `run` on the masks under `root`,
    with masks/overlays under `out/predictions`, per_image_iou.csv, metrics.json and report.html."""
    model, card = load_model(run, device)
    spec, _ = load_run_dataset(Path(run), Path(root), "segment")
    used = split if split in spec.splits else "all" if "all" in spec.splits else None
    if used is None:
        raise DataError(
            f"{root} has no '{split}' split (found: {', '.join(sorted(spec.splits))}); pass another one with --split."
        )
    cfg = InferenceConfig(**card.inference)
    prep = card.preprocessing
    dataset = SegmentationDataset(
        spec.splits[used],
        FullSize(prep.mean, prep.std),
        prep.channels,
        "skip",
        ignore_index=card.ignore_index,
        colours=spec.colours,
        scaling=prep.scaling_config(),
    )
    result = evaluate_segmenter(
        model,
        dataset,
        card.classes,
        card.colours,
        cfg,
        card.ignore_index,
        out / "predictions",
        csv_path=out / "per_image_iou.csv",
    )
    metrics: dict[str, Any] = {
        "task": "segment",
        "run": str(run),
        "data": str(root),
        "mode": recorded_mode(run),
        "head": card.head.get("type"),
        "classes": card.classes,
        "report_split": used,
        used: result,
        "summary": {f"{used}/miou": result["miou"], f"{used}/pixel_accuracy": result["pixel_accuracy"]},
    }
    write_json(out / "metrics.json", metrics)
    write_segmentation_report(out, metrics, backbone=card.backbone)
    return metrics
