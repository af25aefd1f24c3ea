"""`dinotune train` with `task: detect`: object detection on COCO-JSON or YOLO-txt datasets.

`run_detect(cfg, resume=False)` writes one run folder (`cfg.out`): the best model by val/map as a model
folder (`model.json` with task `detect`), metrics.json, predictions.json (COCO results) and box drawings
of the report split, report.html, and the logs and checkpoints of every training verb (`resume=True`
continues exactly). Images are letterboxed: the longest side resized to `data.image_size`, the rest
padded bottom/right, so boxes map back to the original pixels by one scale factor.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
from pydantic import Field
from torch.utils.data import DataLoader

from dinotune.config import StrictModel
from dinotune.data.config import DataConfig
from dinotune.errors import ConfigError, DataError
from dinotune.heads.detect import DetectHeadConfig
from dinotune.losses.fcos import FCOSLossConfig
from dinotune.model import ModelCard, load_model
from dinotune.model.detector import build_detector
from dinotune.model.nms import PostprocessConfig
from dinotune.run_folder import write_json
from dinotune.tasks.detect import DetectionModule
from dinotune.training.modes import prepare_model
from dinotune.training.sampler import resumable_loader
from dinotune.training.trainer import TrainerConfig
from dinotune.verbs.common import Result, backbone_source, with_channels
from dinotune.verbs.training import (
    DenseTrainingConfig,
    fit_and_evaluate,
    training_run,
)


class DetectInferenceConfig(StrictModel):
    """How raw outputs become boxes (stored in the card: predict, evaluate, export and serve use it)."""

    score_threshold: float = Field(0.05, ge=0, le=1, description="Drop (box, class) scores at or below this.")
    nms_iou: float = Field(0.6, gt=0, le=1, description="Class-aware NMS: suppress boxes overlapping more.")
    pre_nms_top_k: int = Field(1000, ge=1, description="Best (box, class) candidates per image going to NMS.")
    max_detections: int = Field(100, ge=1, description="Boxes kept per image after NMS.")


class DetectConfig(DenseTrainingConfig):
    task: Literal["detect"] = "detect"
    data: DataConfig
    head: DetectHeadConfig = Field(default_factory=DetectHeadConfig)
    loss: FCOSLossConfig = Field(default_factory=FCOSLossConfig)
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(max_epochs=30))
    inference: DetectInferenceConfig = Field(default_factory=DetectInferenceConfig)
    save_predictions: bool = Field(True, description="Write predictions.json and box drawings of the report split.")
    out: Path | None = Field(None, description="Run folder (default: runs/detect-<time>).")


def run_detect(cfg: DetectConfig, resume: bool = False, callbacks: tuple[L.Callback, ...] = ()) -> Result:
    """Train a pyramid + FCOS head (and optionally the backbone), keep the best by val/map, evaluate it."""
    from dinotune.data.boxes import load_detection

    start = time.perf_counter()
    if cfg.data.resize == "keep":
        raise ConfigError("data.resize=keep is not used by detection: images are letterboxed to data.image_size.")
    with training_run(cfg, "detect", resume) as (run_dir, run, backbone, prep):
        data_cfg = with_channels(cfg.data, backbone)
        spec = load_detection(data_cfg.root, split_seed=data_cfg.split_seed, val_fraction=data_cfg.val_fraction)
        if not spec.splits.get("train") or not spec.splits.get("val"):
            raise DataError(f"'{cfg.data.root}' needs train and val images with boxes (found splits: "
                            f"{sorted(k for k, v in spec.splits.items() if v)}).")  # fmt: skip
        model = build_detector(backbone, cfg.head, len(spec.classes), PostprocessConfig(**cfg.inference.model_dump()))
        if cfg.data.image_size % model.input_multiple:
            raise ConfigError(f"data.image_size={cfg.data.image_size} must be a multiple of {model.input_multiple} "
                              "(the backbone's patch and the coarsest head.strides).")  # fmt: skip
        prep.resize = "letterbox"
        counts = prepare_model(model, cfg.mode, freeze_blocks=cfg.freeze_blocks, lora=cfg.lora)
        module = DetectionModule(
            model, list(spec.classes), mode=cfg.mode, optim=cfg.optim, loss=cfg.loss, seed=cfg.trainer.seed
        )
        source = backbone_source(backbone, cfg.trainer.seed)
        head = {"type": "fcos", "config": cfg.head.model_dump(mode="json"), "category_ids": list(spec.category_ids)}

        def card() -> ModelCard:
            return ModelCard("detect", list(spec.classes), prep, dict(source), dict(head),
                             inference=cfg.inference.model_dump(), license=backbone.info.license)  # fmt: skip

        write_json(run_dir / "splits.json", _splits_record(spec))
        loaders = _loaders(cfg, spec, prep)
        run.info(f"detect/{cfg.mode} + pyramid {cfg.head.strides} + FCOS (layers {model.layers}): "
                 f"{backbone.info.arch} ({backbone.info.source}), {len(spec.classes)} classes, "
                 f"{counts['trainable']:,} of {counts['total']:,} parameters trainable"
                 + (" - resuming" if resume else ""))  # fmt: skip

        def evaluate() -> dict[str, Any]:
            metrics = evaluate_run_splits(run_dir, spec, data_cfg, save_predictions=cfg.save_predictions)
            return metrics | {"mode": cfg.mode, "head": "fcos"}

        return fit_and_evaluate(cfg, module, loaders, card, run_dir=run_dir, run=run, counts=counts, started=start,
                                resume=resume, save_backbone=cfg.mode != "linear", callbacks=callbacks,
                                evaluate=evaluate)  # fmt: skip


def _splits_record(spec: Any) -> dict[str, Any]:
    """splits.json: the data root and each split's images (relative), as every run folder records them."""
    root = Path(spec.root).resolve()
    splits = {name: [str(Path(s.path).resolve().relative_to(root)) for s in samples]
              for name, samples in spec.splits.items() if samples}  # fmt: skip
    return {"root": str(root), "splits": splits}


def _loaders(cfg: DetectConfig, spec: Any, prep: Any) -> tuple[Any, DataLoader]:
    """The resumable training loader (augmented) and the validation loader (letterboxed only)."""
    from dinotune.data.detection_dataset import DetectionDataset, collate_detection, detection_transform

    data = cfg.data

    def dataset(split: str, train: bool) -> Any:
        augment = train and data.augment != "none"
        transform = detection_transform(augment, data.image_size, prep.mean, prep.std, prep.channels,
                                        seed=cfg.trainer.seed)  # fmt: skip
        return DetectionDataset(spec.splits[split], transform, prep.channels, data.on_bad_file,
                                scaling=data.scaling, max_pixels=data.max_pixels)  # fmt: skip

    workers, train = cfg.data.num_workers, dataset("train", True)
    loader = resumable_loader(train, batch_size=cfg.batch_size, seed=cfg.trainer.seed, num_workers=workers,
                              drop_last=len(train) > cfg.batch_size, collate_fn=collate_detection)  # fmt: skip
    val = DataLoader(dataset("val", False), batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
                     num_workers=workers, persistent_workers=workers > 0, collate_fn=collate_detection)  # fmt: skip
    return loader, val


def evaluate_run_splits(run_dir: Path, spec: Any, data: DataConfig, *, save_predictions: bool = True
                        ) -> dict[str, Any]:  # fmt: skip
    """The saved best model on val and test (mAP in the original images' pixels); the report split's
    predictions.json, per_image.csv, drawings and report.html go into the run folder."""
    from dinotune.data.detection_dataset import DetectionDataset, detection_transform
    from dinotune.evaluation.detect import evaluate_detections

    model, card = load_model(run_dir)
    prep = card.preprocessing
    report = "test" if spec.splits.get("test") else "val"
    metrics: dict[str, Any] = {"task": "detect", "classes": list(spec.classes), "report_split": report}
    summary: dict[str, float] = {}
    for split in ("val", "test"):
        if not spec.splits.get(split):
            continue
        transform = detection_transform(False, prep.image_size, prep.mean, prep.std, prep.channels)
        dataset = DetectionDataset(spec.splits[split], transform, prep.channels, data.on_bad_file,
                                   scaling=data.scaling, max_pixels=data.max_pixels)  # fmt: skip
        with tempfile.TemporaryDirectory() as scratch:  # the other split's files are not kept
            out = run_dir if split == report and save_predictions else Path(scratch)
            title = f"Detection: {run_dir.name} ({split})"
            result = evaluate_detections(model.predict, dataset, card.classes, out, category_ids=spec.category_ids,
                                         backbone=card.backbone, title=title)  # fmt: skip
        metrics[split] = result
        summary |= {f"{split}/map": result["map"], f"{split}/map_50": result["map_50"]}
    metrics["summary"] = summary
    return metrics
