"""`dinotune predict RUN IMAGES...`: classify new images with a saved model."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from dinotune.data.decode import is_image_path
from dinotune.data.formats import list_images
from dinotune.device import autocast
from dinotune.errors import DataError
from dinotune.model import load_model


@dataclass
class Prediction:
    path: Path
    label: str
    probability: float
    top: list[tuple[str, float]]


def expand_images(items: list[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively; anything else is a clear error."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_images(path))
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"'{item}' is neither an image file nor a folder.")
    if not paths:
        raise DataError("No images to predict: pass image files or folders containing images.")
    return paths


def predict(model_dir: str | Path, images: list[str | Path], *, top_k: int = 3, batch_size: int = 32,
            device: str | None = None) -> list[Prediction]:
    model, card = load_model(model_dir, device=device)
    device_ = next(model.parameters()).device
    patch = model.backbone.input_multiple
    results: list[Prediction] = []
    paths = expand_images(images)
    for start in range(0, len(paths), batch_size):
        chunk = [p for p in paths[start:start + batch_size] if is_image_path(p) or p.suffix == ""]
        batch = torch.stack([card.preprocessing.load(p, patch) for p in chunk]).to(device_)
        with torch.inference_mode(), autocast(device_):
            probs = model.predict_proba(batch).float().cpu()
        for path, row in zip(chunk, probs, strict=True):
            values, indices = row.topk(min(top_k, row.numel()))
            top = [(card.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
            results.append(Prediction(path, top[0][0], top[0][1], top))
    return results


def write_predictions_csv(path: Path, predictions: list[Prediction]) -> None:
    from dinotune.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "predicted", "probability", "top"])
        for p in predictions:
            writer.writerow([str(p.path), p.label, f"{p.probability:.6f}",
                             ";".join(f"{label}:{prob:.4f}" for label, prob in p.top)])
