"""`dinotune predict MODEL IMAGES...`: a run, model or export folder on new images, whatever its task.

Classifiers give the top-k labels per image (and a CSV on request); segmenters write index-PNG masks
and overlays. An unreadable file is skipped with a warning; only when every file fails is it an error.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dinotune.atomic import atomic_path
from dinotune.data.paths import expand_images
from dinotune.data.raster import open_scene
from dinotune.device import autocast
from dinotune.errors import ConfigError, DataError
from dinotune.evaluation.depth import predict_depth_files
from dinotune.evaluation.predict import engine_forward
from dinotune.evaluation.segment import predict_masks
from dinotune.evaluation.tiles import DEFAULT_BLOCK, classify_scene, write_tiles
from dinotune.model import Classifier, load_model, model_device, read_card
from dinotune.verbs.common import Result

log = logging.getLogger("dinotune")


@dataclass
class Prediction:
    path: Path
    label: str
    probability: float
    top: list[tuple[str, float]]


def predict(
    model_dir: str | Path,
    images: list[str | Path],
    *,
    top_k: int = 3,
    batch_size: int = 32,
    device: str | None = None,
    threshold: float | None = None,
) -> list[Prediction]:
    """Top-k labels of each readable image, in the order given. A multi-label model's `label` is every label
    with a probability above `threshold` (default: the one chosen on validation, in the card; else 0.5)."""
    model, card = load_model(model_dir, device=device)
    if threshold is None:
        threshold = float(card.inference.get("threshold", 0.5))
    if card.task in ("segment", "depth"):
        raise DataError(f"'{model_dir}' is a {card.task} model; use predict_masks / predict_depth_files "
                        "(CLI: dinotune predict -o DIR).")  # fmt: skip
    device_ = model_device(model)
    results: list[Prediction] = []
    paths = expand_images(images)
    loaded: list[tuple[Path, torch.Tensor]] = []
    for path in paths:
        try:
            loaded.append((path, card.preprocessing.load(path, model.input_multiple)))
        except DataError as err:
            log.warning("skipped %s", err)
    if not loaded:
        raise DataError(f"none of the {len(paths)} images could be read (first: {paths[0]}).")
    probabilities = _probabilities(model, card.multilabel, len(loaded))
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start : start + batch_size]
        batch = torch.stack([image for _, image in chunk]).to(device_)
        with torch.inference_mode(), autocast(device_):
            probs = probabilities(batch)
        for (path, _), row in zip(chunk, probs, strict=True):
            values, indices = row.topk(min(top_k, row.numel()))
            top = [(card.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
            label = top[0][0]
            if card.multilabel:
                label = ";".join(card.classes[i] for i in torch.nonzero(row > threshold).flatten().tolist()) or "-"
            results.append(Prediction(path, label, top[0][1], top))
    return results


def _probabilities(model: torch.nn.Module, multilabel: bool, images: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """batch -> class probabilities on the CPU; a PyTorch classifier's backbone runs on the engine embed and
    probe use (`engine_forward`), any other model through its own predict_proba."""
    if not isinstance(model, Classifier):
        return lambda batch: model.predict_proba(batch).float().cpu()
    forward = engine_forward(model, images)

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        logits = forward(batch)[0].float().cpu()
        return torch.sigmoid(logits) if multilabel else logits.softmax(1)

    return probabilities


def write_predictions_csv(path: Path, predictions: list[Prediction]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "predicted", "probability", "top"])
        for p in predictions:
            writer.writerow(
                [str(p.path), p.label, f"{p.probability:.6f}", ";".join(f"{label}:{prob:.4f}" for label, prob in p.top)]
            )


def predict_tiles(
    model_dir: str | Path, images: list[str | Path], out: Path, tile: int, stride: int | None = None,
    embeddings: bool = False,
) -> Result:  # fmt: skip
    """Classify every `tile`-pixel tile of each image: `out/<stem>.csv` (pixel box, map coordinates of
    the centre, label, probabilities, optionally the embedding) and `out/<stem>.json` (CRS, transform)."""
    model, card = load_model(model_dir)
    count, paths = 0, expand_images(images)
    for path in paths:
        with open_scene(path, card.preprocessing.channels, card.preprocessing.scaling_config()) as scene:
            tiles = classify_scene(model, card, scene, tile, stride)
            write_tiles(Path(out) / f"{path.stem}.csv", tiles, card.classes, embeddings)
        count += len(tiles.boxes)
    return Result(Path(out), {"scenes": len(paths), "tiles": count})


def run_predict(
    model_dir: str | Path, images: list[str | Path], *, out: Path | None = None, top_k: int = 3,
    threshold: float | None = None, tile: int | None = None, tile_stride: int | None = None, embeddings: bool = False,
    depth_format: str = "png",
) -> tuple[Result, list[Prediction]]:  # fmt: skip
    """The verb: classifications (plus `out` CSV), masks and overlays written under `out` (default ./masks), or
    a detector's COCO-JSON and drawings under `out` (default ./detections, `verbs.detect_predict`).

    `tile`: a classifier labels every tile of that many pixels (every `tile_stride`, default `tile`) of
    each image, written under `out` (default ./tiles); a segmenter predicts blocks of that side (default
    2048) - it always works block by block, and writes a GeoTIFF mask for a georeferenced input.
    A depth model writes depth maps under `out` (default ./depth): `depth_format` png (16-bit, scale in a
    JSON sidecar) or tiff (float32 metres), with coloured previews.
    """
    if (tile is not None and tile < 1) or (tile_stride is not None and tile_stride < 1):
        raise ConfigError("--tile and --tile-stride must be positive pixel counts.")
    if read_card(model_dir).task == "detect":
        from dinotune.verbs.detect_predict import predict_boxes

        result = predict_boxes(model_dir, images, Path(out or "detections"))
        return result, []
    if read_card(model_dir).task == "depth":
        folder = Path(out or "depth")
        maps = predict_depth_files(model_dir, images, folder, fmt=depth_format)
        return Result(folder, {"depth_maps": len(maps)}), []
    if read_card(model_dir).task == "segment":
        folder = Path(out or "masks")
        masks = predict_masks(model_dir, images, folder, block=tile or DEFAULT_BLOCK)
        return Result(folder, {"masks": len(masks)}), []
    if tile is not None:
        return predict_tiles(model_dir, images, Path(out or "tiles"), tile, tile_stride, embeddings), []
    predictions = predict(model_dir, images, top_k=top_k, threshold=threshold)
    if out is not None:
        write_predictions_csv(out, predictions)
    return Result(Path(out) if out else Path(model_dir), {"images": len(predictions)}), predictions
