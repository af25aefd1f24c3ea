"""`dinotune train` with `task: finetune`: supervised fine-tuning of a DINOv3 backbone + linear head.

`run_finetune(cfg, resume=False)` writes one run folder (`cfg.out`, layout in docs/run-folder.md): the
best model by the early-stopping metric (EMA weights when enabled, LoRA merged) as a model folder,
`last/`, metrics.json, predictions.csv, Lightning logs and `checkpoints/last.ckpt`, from which
`resume=True` continues exactly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from pydantic import Field, model_validator
from torch.utils.data import DataLoader, Dataset

from dinotune.atomic import write_text
from dinotune.backbones.lora import LoraConfig
from dinotune.config import BackboneConfig, StrictModel
from dinotune.data.config import DataConfig
from dinotune.data.datasets import build_datasets, class_weights, weighted_sampler
from dinotune.data.preflight import preflight
from dinotune.data.preprocessing import Preprocessing
from dinotune.device import autocast
from dinotune.errors import ConfigError, DataError
from dinotune.evaluation.predict import write_predictions
from dinotune.heads.linear import new_linear_head, parse_feature_choice
from dinotune.losses.distill import DistillConfig
from dinotune.metrics import best_threshold, classification_metrics, multilabel_metrics
from dinotune.model import CARD_FILE, Classifier, ModelCard, load_model, read_card
from dinotune.tasks.classify import ClassificationModule, RegularizationConfig
from dinotune.training.modes import Mode, prepare_model
from dinotune.training.optim import OptimConfig
from dinotune.training.sampler import resumable_loader
from dinotune.training.trainer import TrainerConfig
from dinotune.verbs.common import Result, backbone_source, with_channels
from dinotune.verbs.training import EarlyStoppingConfig, fit_and_evaluate, training_run


class FinetuneConfig(StrictModel):
    task: Literal["finetune"] = "finetune"
    data: DataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    mode: Mode = Field("finetune", description="finetune | partial | lora | linear | distill.")
    freeze_blocks: int = Field(0, ge=0, description="partial: freeze the embeddings and this many first blocks.")
    feature_choice: str = Field("cls+patch_mean", description="Head input: cls, cls+patch_mean, last4_cls+...")
    activation_checkpointing: bool = Field(False, description="Recompute activations in backward (less memory).")
    batch_size: int = Field(32, ge=1, description="Images per device per step (global: x devices x accumulation).")
    eval_batch_size: int | None = Field(None, ge=1, description="Validation/test batch (None: batch_size).")
    resolution_schedule: dict[int, int] | None = Field(
        None,
        description="Train image side by epoch, e.g. {0: 224, 5: 512}; images are decoded at "
        "data.image_size and resized in the step.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    regularization: RegularizationConfig = Field(default_factory=RegularizationConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(max_epochs=10))
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    save_last_model: bool = Field(True, description="Also write the final (last-epoch) model to out/last/.")
    out: Path | None = Field(None, description="Run folder (default: runs/finetune-<time>).")

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.mode == "distill" and self.distill.teacher is None:
            raise ValueError("mode=distill needs distill.teacher (a trained run or model folder)")
        for epoch, size in (self.resolution_schedule or {}).items():
            if epoch < 0 or size <= 0:
                raise ValueError(f"resolution_schedule {epoch}: {size} needs epoch >= 0 and a positive size")
        parse_feature_choice(self.feature_choice)
        return self


def _teacher(cfg: FinetuneConfig, classes: list[str], prep: Preprocessing) -> tuple[Classifier, tuple]:
    """The distillation teacher and the affine map from the student's normalisation to the teacher's."""
    if read_card(cfg.distill.teacher).is_onnx:  # type: ignore[arg-type]
        raise ConfigError(f"distill.teacher '{cfg.distill.teacher}' is an ONNX export; distillation needs the "
                          "PyTorch run or model folder it was exported from.")  # fmt: skip
    teacher, card = load_model(cfg.distill.teacher, device="cpu")  # type: ignore[arg-type]
    if card.classes != classes:
        raise DataError(
            f"distill.teacher '{cfg.distill.teacher}' was trained on classes {card.classes}, "
            f"not this dataset's {classes}."
        )
    s_mean, s_std = torch.tensor(prep.mean), torch.tensor(prep.std)
    t_mean, t_std = torch.tensor(card.preprocessing.mean), torch.tensor(card.preprocessing.std)
    return teacher, (s_std / t_std, (s_mean - t_mean) / t_std)  # raw = x * s_std + s_mean, then the teacher's


def _loaders(cfg: FinetuneConfig, spec: Any, sets: dict[str, Dataset]) -> tuple[Any, dict[str, DataLoader]]:
    train = sets.get("train")
    if train is None or "val" not in sets or len(train) == 0:  # type: ignore[arg-type]
        raise DataError(f"'{cfg.data.root}' needs train and val images (found splits: {sorted(sets)}).")
    indices = None
    if cfg.data.weighted_sampler:
        indices = list(weighted_sampler([s.label for s in spec.splits["train"]], seed=cfg.trainer.seed))
    workers = cfg.data.num_workers
    loader = resumable_loader(
        train,
        batch_size=cfg.batch_size,
        seed=cfg.trainer.seed,
        num_workers=workers,
        indices=indices,
        drop_last=len(train) > cfg.batch_size,
    )  # type: ignore[arg-type]
    evals = {
        name: DataLoader(
            ds,
            batch_size=cfg.eval_batch_size or cfg.batch_size,
            shuffle=False,
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        for name, ds in sets.items()
        if name in ("val", "test") and len(ds)
    }  # type: ignore[arg-type]
    return loader, evals


def _module(cfg: FinetuneConfig, backbone: Any, spec: Any, prep: Preprocessing) -> tuple[ClassificationModule, dict]:
    """The Lightning module for `cfg.mode` (a fresh head, the teacher for distillation) and parameter counts."""
    head = new_linear_head(
        backbone.feature_widths, spec.num_classes, cfg.feature_choice, spec.multilabel, cfg.trainer.seed
    )
    model = Classifier(backbone, head)
    reg, checkpointing = cfg.regularization, cfg.activation_checkpointing
    counts = prepare_model(model, cfg.mode, freeze_blocks=cfg.freeze_blocks, lora=cfg.lora,
                           drop_path_rate=reg.drop_path_rate, activation_checkpointing=checkpointing)  # fmt: skip
    teacher, teacher_norm = _teacher(cfg, spec.classes, prep) if cfg.mode == "distill" else (None, None)
    labels = [s.label for s in spec.splits["train"]]
    weights = class_weights(labels, spec.num_classes) if cfg.data.class_weights else None
    module = ClassificationModule(model, spec.num_classes, mode=cfg.mode, optim=cfg.optim, regularization=reg,
                                  class_weights=weights, resolution_schedule=cfg.resolution_schedule, teacher=teacher,
                                  teacher_norm=teacher_norm, distill=cfg.distill, seed=cfg.trainer.seed)  # fmt: skip
    return module, counts


def run_finetune(cfg: FinetuneConfig, resume: bool = False, callbacks: tuple[L.Callback, ...] = ()) -> Result:
    """Train, keep the best model, evaluate it on val/test. `resume`: continue from checkpoints/last.ckpt."""
    start = time.perf_counter()
    with training_run(cfg, "finetune", resume) as (run_dir, run, backbone, prep):
        spec, sets = build_datasets(
            with_channels(cfg.data, backbone), prep.mean, prep.std, run_dir, patch_size=backbone.input_multiple
        )
        if spec.task != "classify":
            raise DataError(f"'{cfg.data.root}' holds '{spec.task}' data; fine-tuning needs class labels.")
        preflight(spec, cfg.data, channels=backbone.info.in_chans)
        module, counts = _module(cfg, backbone, spec, prep)
        loader, evals = _loaders(cfg, spec, sets)
        source = backbone_source(backbone, cfg.trainer.seed)

        def card() -> ModelCard:
            task = "multilabel" if spec.multilabel else "classify"
            return ModelCard(task, spec.classes, prep, dict(source), head={}, license=backbone.info.license)

        run.info(
            f"{cfg.mode}: {backbone.info.arch} ({backbone.info.source}), {spec.num_classes} classes, "
            f"{counts['trainable']:,} of {counts['total']:,} parameters trainable "
            f"({100 * counts['trainable'] / counts['total']:.2f}%)" + (" - resuming" if resume else "")
        )
        return fit_and_evaluate(cfg, module, (loader, evals["val"]), card, run_dir=run_dir, run=run, counts=counts,
                                started=start, resume=resume, save_backbone=True, callbacks=callbacks,
                                evaluate=lambda: _evaluate_splits(cfg, run_dir, spec, sets))  # fmt: skip


def _evaluate_splits(cfg: FinetuneConfig, run_dir: Path, spec: Any, sets: dict[str, Dataset]) -> dict[str, Any]:
    """The saved best model on val and test; predictions.csv of the report split."""
    model, _ = load_model(run_dir)
    report_split = "test" if "test" in sets and len(sets["test"]) else "val"  # type: ignore[arg-type]
    metrics: dict[str, Any] = {
        "task": "multilabel" if spec.multilabel else "classify",
        "classes": spec.classes,
        "report_split": report_split,
        "mode": cfg.mode,
        "counts": {k: len(v) for k, v in sets.items()},
    }  # type: ignore[arg-type]
    key = "map" if spec.multilabel else "accuracy"
    summary: dict[str, float] = {}
    for split in ("val", "test"):
        if split not in sets or not len(sets[split]):  # type: ignore[arg-type]
            continue
        probs, labels, paths = predict_split(model, sets[split], cfg.eval_batch_size or cfg.batch_size)
        score = multilabel_metrics if spec.multilabel else classification_metrics
        metrics[split] = score(probs, labels, spec.classes)
        summary[f"{split}/{key}"] = metrics[split][key]
        if split == report_split:
            write_predictions(run_dir / "predictions.csv", paths, labels, probs, spec.classes, spec.multilabel)
        if split == "val" and spec.multilabel:  # the decision threshold predict uses, chosen on validation
            metrics["threshold"] = store_threshold(run_dir, best_threshold(probs, labels))
    metrics["summary"] = summary
    return metrics


@torch.no_grad()
def predict_split(model: Classifier, dataset: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Probabilities, labels and paths of a whole split, in dataset order."""
    device = next(model.parameters()).device
    probs, labels, paths = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with autocast(device):
            probs.append(model.predict_proba(batch["image"].to(device)).float().cpu())
        labels.append(batch["label"])
        paths += [Path(p) for p in batch["path"]]
    return torch.cat(probs), torch.cat(labels), paths


def store_threshold(run_dir: Path, threshold: float) -> float:
    """Record the multi-label decision threshold in the run's model card (predict and serve read it there)."""
    card = read_card(run_dir)
    card.inference["threshold"] = threshold
    write_text(run_dir / CARD_FILE, card.to_json())
    return threshold
