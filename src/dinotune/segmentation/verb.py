"""`dinotune train` with `task: segment`: semantic segmentation on custom masks.

`run_segment(cfg, resume=False)` writes one run folder (`cfg.out`):

    config.yaml                   the fully resolved config
    segmentation.json, head.safetensors, (backbone/)   the best model by val/miou (load_segmenter)
    last/                         the model at the end of training, same format (save_last_model)
    metrics.json                  val/test metrics of the best model at full resolution (sliding window)
    per_image_iou.csv             report split: one row per image (mIoU, pixel accuracy, IoU per class)
    predictions/masks/*.png       report split: predicted index PNGs (palette = class colours)
    predictions/overlays/*.png    report split: image blended with the predicted colours
    logs/, checkpoints/last.ckpt, log.txt   as every training verb; resume=True continues exactly

Training sees `data.image_size` crops (augmented); the final evaluation reads every val/test image at
its own size and predicts it with `inference` (sliding window by default), as the ADE20K protocol does.
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from dinotune.atomic import atomic_dir, atomic_path
from dinotune.backbones.lora import LoraConfig, has_lora, merge_lora
from dinotune.config import BackboneConfig, StrictModel, save_resolved
from dinotune.data.config import DataConfig
from dinotune.data.datasets import SegmentationDataset, build_datasets
from dinotune.data.preprocessing import Preprocessing
from dinotune.errors import ConfigError, DataError
from dinotune.optim import OptimConfig
from dinotune.segmentation.heads import HeadConfig
from dinotune.segmentation.inference import InferenceConfig, default_colours, overlay, predict_probs, write_index_png
from dinotune.segmentation.losses import LossConfig, pixel_class_weights
from dinotune.segmentation.metrics import confusion_matrix, scores
from dinotune.segmentation.model import SegmentationCard, Segmenter, build_segmenter, load_segmenter, save_segmenter
from dinotune.segmentation.task import SegmentationModule, SegMode
from dinotune.tasks.classification import prepare_model
from dinotune.training.trainer import TrainerConfig, build_trainer
from dinotune.verbs.finetune import EarlyStoppingConfig, EpochSeeded, ResumableSampler, ShardAndResume
from dinotune.verbs.runs import RunLog, load_training_backbone, training_run_dir, write_json


class SegmentConfig(StrictModel):
    task: Literal["segment"] = "segment"
    data: DataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    mode: SegMode = Field("linear", description="linear (frozen backbone) | finetune | partial | lora.")
    freeze_blocks: int = Field(0, ge=0, description="partial: freeze the embeddings and this many first blocks.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    batch_size: int = Field(8, ge=1, description="Training crops per device per step.")
    eval_batch_size: int | None = Field(None, ge=1, description="Validation batch during training.")
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(max_epochs=20))
    early_stopping: EarlyStoppingConfig = Field(default_factory=lambda: EarlyStoppingConfig(patience=10))
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    save_last_model: bool = Field(False, description="Also write the final model to out/last/.")
    save_predictions: bool = Field(True, description="Write predicted masks and overlays of the report split.")
    out: Path | None = Field(None, description="Run folder (default: runs/segment-<time>).")


@dataclass
class SegmentResult:
    run_dir: Path
    metrics: dict[str, Any]


class FullSize:
    """Eval transform: normalise only, keep the image's own size (a class, so workers can pickle it)."""

    def __init__(self, mean: Iterable[float], std: Iterable[float]) -> None:
        self.mean = np.asarray(list(mean), dtype=np.float32)
        self.std = np.asarray(list(std), dtype=np.float32)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        image = image[:, :, None] if image.ndim == 2 else image
        img = (image.astype(np.float32) - self.mean) / self.std
        out: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))}
        if mask is not None:
            out["mask"] = torch.from_numpy(mask.astype(np.int64))
        return out


def class_names(cfg: SegmentConfig, spec: Any) -> tuple[list[str], list[list[int]]]:
    """Classes from the class map, data.num_classes or data.class_mapping; colours from the map or a palette."""
    names, colours = list(spec.classes), [list(c) for c in (spec.colours or [])]
    n = cfg.data.num_classes
    if n is None and cfg.data.class_mapping is not None:
        from dinotune.data.decode import load_class_mapping

        targets = [t for t in load_class_mapping(cfg.data.class_mapping).values() if t != cfg.data.ignore_index]
        n = max(targets) + 1 if targets else None
    n = n or len(names)
    if not n:
        raise ConfigError(f"'{cfg.data.root}' has no class map (classes.yaml); set data.num_classes or "
                          "data.class_map.")
    if len(names) != n:
        names = [f"class_{i}" for i in range(n)]
        colours = []
    return names, colours if len(colours) == n else default_colours(n)


def plain_copy(model: Segmenter) -> Segmenter:
    """A CPU copy with LoRA merged and no drop path: what a model folder stores."""
    import copy

    net = copy.deepcopy(model).cpu().eval()
    if has_lora(net):  # type: ignore[arg-type]
        merge_lora(net.backbone)
    net.backbone.hf.config.drop_path_rate = 0.0
    return net


class BestSegmenterExport(L.Callback):
    """Write the model folder `folder` whenever val/miou improves (state restored on resume)."""

    def __init__(self, folder: Path, monitor: str, card: Any, save_backbone: bool) -> None:
        self.folder, self.monitor, self.card, self.save_backbone = folder, monitor, card, save_backbone
        self.best, self.best_epoch = -math.inf, -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or not float(value) > self.best:
            return
        self.best, self.best_epoch = float(value), trainer.current_epoch
        if trainer.is_global_zero:
            card = self.card()
            card.metrics = {self.monitor: self.best, "epoch": self.best_epoch, "step": trainer.global_step}
            with atomic_dir(self.folder, overwrite=True) as tmp:
                save_segmenter(tmp, plain_copy(pl_module.deployable()), card, self.save_backbone)  # type: ignore

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


def run_segment(cfg: SegmentConfig, resume: bool = False, callbacks: Iterable[L.Callback] = ()) -> SegmentResult:
    """Train a segmentation head (and optionally the backbone), keep the best, evaluate it at full size."""
    start = time.perf_counter()
    run_dir, ckpt = training_run_dir(cfg.out, "segment", resume)
    if cfg.data.resize == "keep":
        raise ConfigError("data.resize=keep gives crops of different sizes; segmentation batches need crop or pad.")
    if cfg.data.class_weights or cfg.data.weighted_sampler:
        raise ConfigError("data.class_weights / data.weighted_sampler apply to classification; for segmentation set "
                          "loss.class_weights (inverse, sqrt_inverse or a list) instead.")
    data_cfg = cfg.data.model_copy(update={"task": "segment"})
    run = RunLog(run_dir)
    save_resolved(cfg, run_dir)
    backbone = load_training_backbone(cfg.backbone, cfg.data.channels, cfg.trainer.seed)
    if cfg.data.image_size % backbone.input_multiple:
        raise ConfigError(f"data.image_size={cfg.data.image_size} must be a multiple of "
                          f"{backbone.input_multiple} for this backbone.")
    mean, std = tuple(cfg.data.mean or backbone.info.mean), tuple(cfg.data.std or backbone.info.std)
    spec, sets = build_datasets(data_cfg, mean, std, run_dir)
    if "train" not in sets or "val" not in sets or not len(sets["train"]):  # type: ignore[arg-type]
        raise DataError(f"'{cfg.data.root}' needs train and val images with masks (found splits: {sorted(sets)}).")
    classes, colours = class_names(cfg, spec)
    model = build_segmenter(backbone, cfg.head, len(classes))
    counts = prepare_model(model, cfg.mode, freeze_blocks=cfg.freeze_blocks, lora=cfg.lora)  # type: ignore[arg-type]
    weights = _class_weights(cfg, sets["train"], len(classes))  # type: ignore[arg-type]
    module = SegmentationModule(model, len(classes), mode=cfg.mode, optim=cfg.optim, loss=cfg.loss,
                                class_weights=weights, ignore_index=cfg.data.ignore_index, seed=cfg.trainer.seed)
    prep = Preprocessing(image_size=cfg.data.image_size, resize=cfg.data.resize, channels=cfg.data.channels,
                         mean=mean, std=std, scaling=cfg.data.scaling.model_dump(exclude_none=True))
    source = {"source": backbone.info.source, "arch": backbone.info.arch, "in_chans": backbone.info.in_chans,
              "seed": cfg.trainer.seed, "identity": backbone.info.identity}

    def card() -> SegmentationCard:
        return SegmentationCard(classes=classes, colours=colours, preprocessing=prep, backbone=dict(source),
                                head=cfg.head.model_dump(), layers=model.layers, ignore_index=cfg.data.ignore_index,
                                inference=cfg.inference.model_dump(), license=backbone.info.license)

    save_backbone = cfg.mode != "linear"
    best = BestSegmenterExport(run_dir / "best", module.monitor, card, save_backbone)
    train = sets["train"]
    sampler = ResumableSampler(train, cfg.trainer.seed)
    workers = cfg.data.num_workers
    common: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
    loader = DataLoader(EpochSeeded(train, cfg.trainer.seed), batch_size=cfg.batch_size, sampler=sampler,
                        drop_last=len(train) > cfg.batch_size, **common)  # type: ignore[arg-type]
    val_loader = DataLoader(sets["val"], batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False, **common)
    extra: list[L.Callback] = [ShardAndResume(sampler, cfg.batch_size), best, *callbacks]
    if cfg.early_stopping.enabled:
        from lightning.pytorch.callbacks import EarlyStopping

        extra.append(EarlyStopping(monitor=cfg.early_stopping.monitor or module.monitor, mode="max",
                                   patience=cfg.early_stopping.patience, min_delta=cfg.early_stopping.min_delta,
                                   check_on_train_epoch_end=False))
    trainer = build_trainer(cfg.trainer, run_dir, extra)
    run.info(f"segment/{cfg.mode} + {cfg.head.type} head (layers {model.layers}): {backbone.info.arch} "
             f"({backbone.info.source}), {len(classes)} classes, {counts['trainable']:,} of "
             f"{counts['total']:,} parameters trainable")
    if resume:
        run.info(f"resuming from {ckpt}" if ckpt else f"nothing to resume in {run_dir}; starting fresh")
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=ckpt)
    metrics: dict[str, Any] = {}
    if trainer.is_global_zero:
        metrics = _finish(cfg, run_dir, module, card, best, spec, classes, colours, mean, std, run)
        metrics |= {"parameters": counts, "train_seconds_this_session": round(time.perf_counter() - start, 2),
                    "epochs_run": trainer.current_epoch, "steps": trainer.global_step, "resumed_from": str(ckpt or "")}
        write_json(run_dir / "metrics.json", metrics)
        from dinotune.segmentation.report import write_segmentation_report

        write_segmentation_report(run_dir, metrics)
        run.info(" ".join(f"{k} {v:.4f}" for k, v in metrics["summary"].items()))
    return SegmentResult(run_dir, metrics)


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


def _finish(cfg: SegmentConfig, run_dir: Path, module: SegmentationModule, card: Any, best: BestSegmenterExport,
            spec: Any, classes: list[str], colours: list[list[int]], mean: tuple, std: tuple,
            run: RunLog) -> dict[str, Any]:
    """Move the best model into the run folder, evaluate it on val/test at full size, write predictions."""
    if cfg.save_last_model:
        last_card = card()
        last_card.metrics = {"epoch": module.current_epoch, "step": module.global_step}
        with atomic_dir(run_dir / "last", overwrite=True) as tmp:
            save_segmenter(tmp, plain_copy(module.model), last_card, cfg.mode != "linear")
    best_dir = run_dir / "best"
    if best_dir.is_dir():
        for item in best_dir.iterdir():
            target = run_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
        shutil.rmtree(best_dir)
    else:
        run.warn("no validation ran: the run folder holds the last model")
        save_segmenter(run_dir, plain_copy(module.model), card(), cfg.mode != "linear")
    model, _ = load_segmenter(run_dir)
    report = "test" if spec.splits.get("test") else "val"
    metrics: dict[str, Any] = {"classes": classes, "report_split": report, "mode": cfg.mode, "head": cfg.head.type,
                               "inference": cfg.inference.model_dump(),
                               "best": {"monitor": best.monitor, "value": best.best, "epoch": best.best_epoch}}
    lut = None
    if cfg.data.class_mapping is not None:
        from dinotune.data.decode import build_lut, load_class_mapping

        lut = build_lut(load_class_mapping(cfg.data.class_mapping), cfg.data.ignore_index)
    summary: dict[str, float] = {}
    for split in ("val", "test"):
        if not spec.splits.get(split):
            continue
        dataset = SegmentationDataset(spec.splits[split], FullSize(mean, std), cfg.data.channels, cfg.data.on_bad_file,
                                      lut=lut, ignore_index=cfg.data.ignore_index, colours=spec.colours,
                                      scaling=cfg.data.scaling, max_pixels=cfg.data.max_pixels)
        out = run_dir / "predictions" if split == report and cfg.save_predictions else None
        result = evaluate_segmenter(model, dataset, classes, colours, cfg.inference, cfg.data.ignore_index, out,
                                    csv_path=run_dir / "per_image_iou.csv" if split == report else None)
        metrics[split] = result
        summary |= {f"{split}/miou": result["miou"], f"{split}/pixel_accuracy": result["pixel_accuracy"]}
    metrics["summary"] = summary
    return metrics


@torch.no_grad()
def evaluate_segmenter(model: Segmenter, dataset: SegmentationDataset, classes: list[str],
                       colours: list[list[int]], inference: InferenceConfig, ignore_index: int = 255,
                       out: Path | None = None, csv_path: Path | None = None) -> dict[str, Any]:
    """Full-size metrics of `model` on `dataset` (one image at a time); optional masks/overlays/CSV."""
    from dinotune.data.decode import read_image

    n = len(classes)
    device = next(model.parameters()).device
    total = torch.zeros(n, n, dtype=torch.long)
    rows = []
    for item in DataLoader(dataset, batch_size=1, shuffle=False):
        probs = predict_probs(model, item["image"].to(device), n, inference)
        pred = probs.argmax(1)[0].cpu()
        cm = confusion_matrix(pred, item["mask"][0], n, ignore_index)
        total += cm
        path = Path(item["path"][0])
        per = scores(cm)
        rows.append([str(path), f"{per['miou']:.6f}", f"{per['pixel_accuracy']:.6f}",
                     *("" if v is None else f"{v:.6f}" for v in per["iou"])])
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
def predict_masks(model_dir: str | Path, images: Iterable[str | Path], out: str | Path,
                  inference: InferenceConfig | None = None, device: str | None = None,
                  overlays: bool = True) -> list[Path]:
    """Predict index-PNG masks (out/masks/<stem>.png) and overlays (out/overlays/) for image files or folders."""
    from dinotune.data.decode import read_image
    from dinotune.data.formats import list_images

    model, card = load_segmenter(model_dir, device)
    cfg = inference or InferenceConfig(**card.inference)
    prep = card.preprocessing
    transform, scaling = FullSize(prep.mean, prep.std), prep.scaling_config()
    paths: list[Path] = []
    for item in images:
        item = Path(item)
        if item.is_dir():
            paths += list_images(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"'{item}' is neither an image file nor a folder.")
    out, written = Path(out), []
    device_ = next(model.parameters()).device
    for path in paths:
        image = read_image(path, prep.channels, scaling)
        probs = predict_probs(model, transform(image)["image"][None].to(device_), len(card.classes), cfg)
        pred = probs.argmax(1)[0].cpu().numpy()
        target = out / "masks" / f"{path.stem}.png"
        write_index_png(target, pred, card.colours)
        if overlays:
            _save_rgb(out / "overlays" / f"{path.stem}.png", overlay(image, pred, card.colours, 0.5, card.ignore_index))
        written.append(target)
    return written


__all__ = ["SegmentConfig", "SegmentResult", "evaluate_segmenter", "predict_masks", "run_segment"]
