"""`dinotune train` with `task: segment`: semantic segmentation on custom masks.

`run_segment(cfg, resume=False)` writes one run folder (`cfg.out`, layout in docs/run-folder.md): the
best model by val/miou as a model folder (`model.json` with task `segment`), metrics.json at full
resolution, per_image_iou.csv, predicted masks and overlays of the report split, report.html, and the
logs and checkpoints of every training verb (`resume=True` continues exactly).

Training sees `data.image_size` crops (augmented); the final evaluation reads every val/test image at
its own size and predicts it with `inference` (sliding window by default), as the ADE20K protocol does.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from dinotune.config import cache_home
from dinotune.data.config import DataConfig
from dinotune.data.datasets import SegmentationDataset, build_datasets
from dinotune.data.decode import build_lut, load_class_mapping
from dinotune.data.preflight import preflight
from dinotune.data.transforms import FullSize
from dinotune.errors import ConfigError, DataError
from dinotune.evaluation.segment import evaluate_segmenter
from dinotune.evaluation.segment_report import write_segmentation_report
from dinotune.features.dense import cache_views, dense_sets
from dinotune.heads.segment import HeadConfig
from dinotune.losses.segmentation import SegmentationLossConfig, pixel_class_weights
from dinotune.model import ModelCard, build_segmenter, load_model
from dinotune.model.inference import InferenceConfig, default_colours
from dinotune.model.mask2former import build_mask_segmenter, card_fields, resolve_classes, set_trainable_parts
from dinotune.tasks.segment import SegmentationModule
from dinotune.training.modes import prepare_model
from dinotune.training.sampler import resumable_loader
from dinotune.verbs.common import Result, backbone_source, with_channels
from dinotune.verbs.training import (
    DenseTrainingConfig,
    fit_and_evaluate,
    training_run,
)


class SegmentConfig(DenseTrainingConfig):
    task: Literal["segment"] = "segment"
    data: DataConfig
    head: HeadConfig = Field(default_factory=HeadConfig)
    loss: SegmentationLossConfig = Field(default_factory=SegmentationLossConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    save_predictions: bool = Field(True, description="Write predicted masks and overlays of the report split.")
    dense_cache: bool = Field(
        True, description="Frozen backbone + data.augment=none: train on patch maps cached on disk (>10x faster)."
    )
    out: Path | None = Field(None, description="Run folder (default: runs/segment-<time>).")


def class_names(cfg: SegmentConfig, spec: Any) -> tuple[list[str], list[list[int]]]:
    """Classes from the class map, data.num_classes or data.class_mapping; colours from the map or a palette."""
    names, colours = list(spec.classes), [list(c) for c in (spec.colours or [])]
    n = cfg.data.num_classes
    if n is None and cfg.data.class_mapping is not None:
        targets = [t for t in load_class_mapping(cfg.data.class_mapping).values() if t != cfg.data.ignore_index]
        n = max(targets) + 1 if targets else None
    n = n or len(names)
    if not n:
        raise ConfigError(f"'{cfg.data.root}' has no class map (classes.yaml); set data.num_classes or data.class_map.")
    if len(names) != n:
        names = [f"class_{i}" for i in range(n)]
        colours = []
    return names, colours if len(colours) == n else default_colours(n)


def run_segment(cfg: SegmentConfig, resume: bool = False, callbacks: tuple[L.Callback, ...] = ()) -> Result:
    """Train a segmentation head (and optionally the backbone), keep the best, evaluate it at full size."""
    start = time.perf_counter()
    _check(cfg)
    with training_run(cfg, "segment", resume) as (run_dir, run, backbone, prep):
        data_cfg = with_channels(cfg.data, backbone).model_copy(update={"task": "segment"})
        multiple = math.lcm(backbone.input_multiple, 32) if cfg.head.type == "m2f" else backbone.input_multiple
        spec, sets = build_datasets(data_cfg, prep.mean, prep.std, run_dir, patch_size=multiple)
        if "train" not in sets or "val" not in sets or not len(sets["train"]):  # type: ignore[arg-type]
            raise DataError(f"'{cfg.data.root}' needs train and val images with masks (found splits: {sorted(sets)}).")
        preflight(spec, cfg.data, channels=backbone.info.in_chans)
        classes, colours = class_names(cfg, spec)
        model, head_fields = _build_model(cfg, backbone, classes)
        counts = prepare_model(model, cfg.mode, freeze_blocks=cfg.freeze_blocks, lora=cfg.lora)
        if cfg.head.type == "m2f":  # head-only fine-tuning of chosen parts (e.g. predictor.class_embed)
            set_trainable_parts(model.head, cfg.head.m2f.trainable)
            counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        sets = _dense_cache(cfg, sets, model, prep, run)
        weights = _class_weights(cfg, sets["train"], len(classes))  # type: ignore[arg-type]
        module = SegmentationModule(model, len(classes), mode=cfg.mode, optim=cfg.optim, loss=cfg.loss,
                                    class_weights=weights, ignore_index=cfg.data.ignore_index,
                                    seed=cfg.trainer.seed, set_loss=cfg.head.m2f.loss)  # fmt: skip
        source = backbone_source(backbone, cfg.trainer.seed)

        def card() -> ModelCard:
            head = {"type": cfg.head.type, "config": cfg.head.model_dump(mode="json"), **head_fields}
            return ModelCard("segment", classes, prep, dict(source), head, colours=colours,
                             ignore_index=cfg.data.ignore_index, inference=cfg.inference.model_dump(),
                             license=backbone.info.license)  # fmt: skip

        loaders = _loaders(cfg, sets)
        run.info(
            f"segment/{cfg.mode} + {cfg.head.type} head (layers {model.layers}): {backbone.info.arch} "
            f"({backbone.info.source}), {len(classes)} classes, {counts['trainable']:,} of "
            f"{counts['total']:,} parameters trainable" + (" - resuming" if resume else "")
        )
        report = partial(write_segmentation_report, run_dir, backbone=card().backbone)
        return fit_and_evaluate(cfg, module, loaders, card, run_dir=run_dir, run=run, counts=counts, started=start,
                                resume=resume, save_backbone=cfg.mode != "linear", callbacks=callbacks,
                                evaluate=lambda: _evaluate_splits(cfg, run_dir, spec, classes, colours, prep),
                                report=report)  # fmt: skip


def _build_model(cfg: SegmentConfig, backbone: Any, classes: list[str]) -> tuple[Any, dict[str, Any]]:
    """The segmenter of `cfg.head` and what its card's head section needs beyond type and config."""
    if cfg.head.type != "m2f":
        return build_segmenter(backbone, cfg.head, len(classes)), {}
    head_classes, mapping, head_sd = resolve_classes(cfg.head.m2f, classes)
    model = build_mask_segmenter(backbone, cfg.head.m2f, classes, head_classes, mapping, head_sd)
    return model, card_fields(model, head_classes, mapping)


def _dense_cache(cfg: SegmentConfig, sets: dict[str, Any], model: Any, prep: Any, run: Any) -> dict[str, Any]:
    """A frozen backbone and replayable augmentation: the head trains on cached patch maps (features.dense)."""
    if cfg.head.type == "m2f":
        run.info("dense feature cache: off (the Mask2Former adapter reads the image itself)")
        return sets
    frozen = not any(p.requires_grad for p in model.backbone.parameters())
    views, reason = cache_views(frozen, cfg.data.augment, cfg.data.hflip)
    if not views or not cfg.dense_cache:
        run.info(f"dense feature cache: off ({reason if views == 0 else 'dense_cache=false'})")
        return sets
    skip = {"root", "num_workers", "split_seed", "val_fraction", "test_fraction", "split_file"}
    train = sets["train"]
    description = {"data": cfg.data.model_dump(mode="json", exclude=skip), "preprocessing": prep.__dict__,
                   "colours": train.colours, "lut": None if train.lut is None else train.lut.tolist()}  # fmt: skip
    root = cache_home() / "dense"
    return dense_sets(sets, model.backbone, model.layers, views, root, description, run.info, cfg.data.num_workers)


def _check(cfg: SegmentConfig) -> None:
    if cfg.head.type == "m2f" and cfg.data.image_size < 64:
        raise ConfigError(f"data.image_size={cfg.data.image_size} is too small for head.type=m2f (its stride-32 "
                          "maps must be at least 2x2); use data.image_size=64 or more.")  # fmt: skip
    if cfg.data.resize == "keep":
        raise ConfigError("data.resize=keep gives crops of different sizes; segmentation batches need crop or pad.")
    if cfg.data.class_weights or cfg.data.weighted_sampler:
        raise ConfigError(
            "data.class_weights / data.weighted_sampler apply to classification; for segmentation set "
            "loss.class_weights (inverse, sqrt_inverse or a list) instead."
        )


def _loaders(cfg: SegmentConfig, sets: dict[str, Any]) -> tuple[Any, DataLoader]:
    """The resumable training loader and the validation loader."""
    workers, train = cfg.data.num_workers, sets["train"]
    loader = resumable_loader(train, batch_size=cfg.batch_size, seed=cfg.trainer.seed, num_workers=workers,
                              drop_last=len(train) > cfg.batch_size)  # fmt: skip
    val = DataLoader(sets["val"], batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
                     num_workers=workers, persistent_workers=workers > 0)  # fmt: skip
    return loader, val


def _class_weights(cfg: SegmentConfig, train: SegmentationDataset, n: int) -> torch.Tensor | None:
    mode = cfg.loss.class_weights
    if isinstance(mode, list):
        if len(mode) != n:
            raise ConfigError(f"loss.class_weights has {len(mode)} values but the data has {n} classes.")
        return torch.tensor(mode, dtype=torch.float32)
    if mode == "none":
        return None
    items = (train[i]["mask"] for i in range(min(len(train), 2000)))
    return pixel_class_weights(items, n, cfg.data.ignore_index, mode)


def _evaluate_splits(
    cfg: SegmentConfig, run_dir: Path, spec: Any, classes: list[str], colours: list[list[int]], prep: Any
) -> dict[str, Any]:
    """The saved best model on val and test at full size; masks, overlays and per-image IoU of the report split."""
    model, _ = load_model(run_dir)
    report = "test" if spec.splits.get("test") else "val"
    metrics: dict[str, Any] = {
        "task": "segment",
        "classes": classes,
        "report_split": report,
        "mode": cfg.mode,
        "head": cfg.head.type,
        "inference": cfg.inference.model_dump(),
    }
    lut = None
    if cfg.data.class_mapping is not None:
        lut = build_lut(load_class_mapping(cfg.data.class_mapping), cfg.data.ignore_index)
    summary: dict[str, float] = {}
    for split in ("val", "test"):
        if not spec.splits.get(split):
            continue
        dataset = SegmentationDataset(
            spec.splits[split],
            FullSize(prep.mean, prep.std),
            prep.channels,
            cfg.data.on_bad_file,
            lut=lut,
            ignore_index=cfg.data.ignore_index,
            colours=spec.colours,
            scaling=cfg.data.scaling,
            max_pixels=cfg.data.max_pixels,
        )
        out = run_dir / "predictions" if split == report and cfg.save_predictions else None
        result = evaluate_segmenter(
            model,
            dataset,
            classes,
            colours,
            cfg.inference,
            cfg.data.ignore_index,
            out,
            csv_path=run_dir / "per_image_iou.csv" if split == report else None,
        )
        metrics[split] = result
        summary |= {f"{split}/miou": result["miou"], f"{split}/pixel_accuracy": result["pixel_accuracy"]}
    metrics["summary"] = summary
    return metrics
