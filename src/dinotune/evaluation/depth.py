"""Depth at full size: per-image metrics over a dataset, depth files and previews, for a run or an export.

Every image is predicted at its own size with the card's inference settings (sliding window by default);
`model` is a `DepthModel` or its ONNX Runtime twin (both give (B, 1, H, W) metres).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dinotune.atomic import atomic_path
from dinotune.data.decode import read_image
from dinotune.data.depth import DepthDataset, FullSizeDepth, load_depth_dataset, valid_depth
from dinotune.data.paths import expand_images
from dinotune.errors import DataError
from dinotune.evaluation.depth_files import png_scale, preview_png, write_depth
from dinotune.evaluation.depth_report import write_depth_report
from dinotune.metrics.depth import DIRECTIONS, NAMES, DepthMeter
from dinotune.model import load_model, model_device
from dinotune.model.depther import predict_depth
from dinotune.model.slide import InferenceConfig
from dinotune.run_folder import recorded_mode, write_json

MAX_PREVIEWS = 8


def depth_settings(card: Any) -> dict[str, Any]:
    """The card's depth section (an export keeps it under head.source): range in metres, the data's PNG scale."""
    stored = card.head.get("depth") or card.head.get("source", {}).get("depth", {})
    return {"min_depth": 0.001, "max_depth": 10.0, "depth_scale": 0.001, **stored}


@torch.no_grad()
def evaluate_depther(
    model: Any,
    dataset: DepthDataset,
    inference: InferenceConfig,
    out: Path | None = None,
    csv_path: Path | None = None,
    scale: float = 0.001,
) -> dict[str, Any]:
    """Full-size metrics of `model` on `dataset` (one image at a time); optional depth files, previews, CSV."""
    meter, rows, device = DepthMeter(dataset.min_depth, dataset.max_depth), [], model_device(model)
    for index, item in enumerate(DataLoader(dataset, batch_size=1, shuffle=False)):
        pred = predict_depth(model, item["image"].to(device), inference)[:, 0].cpu()
        target = item["depth"]
        valid = valid_depth(target, dataset.min_depth, dataset.max_depth)
        values = meter.update(pred, target, valid)
        path = Path(item["path"][0])
        rows.append([str(path), *([""] * len(NAMES) if values is None else [f"{float(v):.6f}" for v in values])])
        if out is not None:
            write_depth(out / "depth" / path.stem, pred[0].numpy(), scale=scale)
            if index < MAX_PREVIEWS:
                image = read_image(path, dataset.channels, dataset.scaling)
                preview_png(
                    out / "previews" / f"{path.stem}.png", image, pred[0].numpy(), target[0].numpy(), valid[0].numpy()
                )
    if csv_path is not None:
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", *NAMES])
            writer.writerows(rows)
    return meter.compute()


@torch.no_grad()
def predict_depth_files(
    model_dir: str | Path,
    images: Iterable[str | Path],
    out: str | Path,
    *,
    fmt: str = "png",
    inference: InferenceConfig | None = None,
    device: str | None = None,
    previews: bool = True,
) -> list[Path]:
    """Depth maps under out/depth/ (16-bit PNG + JSON sidecar, or float TIFF) and previews under out/previews/."""
    model, card = load_model(model_dir, device)
    if card.task != "depth":
        raise DataError(f"'{model_dir}' is a {card.task} model; depth maps need a depth model.")
    if fmt not in ("png", "tiff"):
        raise DataError(f"depth format '{fmt}' is not supported; use png (16-bit + scale) or tiff (float32).")
    cfg, prep, settings = inference or InferenceConfig(**card.inference), card.preprocessing, depth_settings(card)
    scale = png_scale(settings["depth_scale"], settings["max_depth"])
    transform, out, written = FullSizeDepth(prep.mean, prep.std), Path(out), []
    for path in expand_images(list(images)):
        image = read_image(path, prep.channels, prep.scaling_config())
        x = transform(image)["image"][None].to(model_device(model))
        depth = predict_depth(model, x, cfg)[0, 0].cpu().numpy()
        written.append(write_depth(out / "depth" / path.stem, depth, fmt=fmt, scale=scale))
        if previews:
            preview_png(out / "previews" / f"{path.stem}.png", image, depth)
    return written


def depth_dataset(spec_samples: list, card: Any, settings: dict[str, Any]) -> DepthDataset:
    prep = card.preprocessing
    return DepthDataset(
        spec_samples,
        FullSizeDepth(prep.mean, prep.std),
        channels=prep.channels,
        depth_scale=settings["depth_scale"],
        min_depth=settings["min_depth"],
        max_depth=settings["max_depth"],
        scaling=prep.scaling_config(),
    )


def depth_summary(split: str, result: dict[str, Any]) -> dict[str, float]:
    return {f"{split}/{k}": result[k] for k in ("absrel", "rmse", "delta1")}


def evaluate_depth(
    run: str | Path, root: str | Path, *, split: str = "test", out: Path, device: str | None = None
) -> dict[str, Any]:
    """AbsRel, RMSE, log10, deltas of the model in `run` on the depth pairs under `root`, with depth
    files and previews under `out/predictions`, per_image_depth.csv, metrics.json and report.html."""
    model, card = load_model(run, device)
    saved = Path(run) / "splits.json"
    spec = load_depth_dataset(root, auto_split=False)
    if set(spec.splits) == {"all"} and saved.is_file():  # the run's own split of this folder
        spec = load_depth_dataset(root, split_file=saved)
    used = split if split in spec.splits else "all" if "all" in spec.splits else None
    if used is None:
        raise DataError(f"{root} has no '{split}' split (found: {', '.join(sorted(spec.splits))}); pass --split.")
    settings = depth_settings(card)
    result = evaluate_depther(
        model,
        depth_dataset(spec.splits[used], card, settings),
        InferenceConfig(**card.inference),
        out / "predictions",
        csv_path=out / "per_image_depth.csv",
        scale=png_scale(settings["depth_scale"], settings["max_depth"]),
    )
    metrics: dict[str, Any] = {
        "task": "depth",
        "run": str(run),
        "data": str(root),
        "mode": recorded_mode(run),
        "head": card.head.get("type"),
        "classes": card.classes,
        "report_split": used,
        "directions": DIRECTIONS,
        "depth": settings,
        used: result,
        "summary": depth_summary(used, result),
    }
    write_json(out / "metrics.json", metrics)
    write_depth_report(out, metrics, backbone=card.backbone)
    return metrics


__all__ = ["depth_settings", "evaluate_depth", "evaluate_depther", "predict_depth_files"]
