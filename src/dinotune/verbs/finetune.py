"""`dinotune train` with `task: finetune`: supervised fine-tuning of a DINOv3 backbone + linear head.

`run_finetune(cfg, resume=False)` writes one run folder (`cfg.out`), in the layout of the probe verb:

    config.yaml               the fully resolved config
    model.json, head.safetensors, backbone/   the best model (by the early-stopping metric; EMA weights
                              when enabled, LoRA merged), loadable by `load_model` / predict / export / serve
    last/                     the model at the end of training, same format (save_last_model)
    metrics.json              val/test metrics of the best model, parameter counts, training time
    predictions.csv           per-image probabilities of the best model on the report split
    logs/version_N/           Lightning CSV logs (+ tensorboard/, mlruns/, wandb/ when enabled)
    checkpoints/last.ckpt     the full Lightning state; `resume=True` continues exactly from it
    log.txt                   a readable log

Exact resume: the train sampler shuffles with (seed, epoch), skips the batches an interrupted epoch
already used, and tells the dataset the epoch so augmentations are seeded by (seed, epoch, index).
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from pydantic import Field, model_validator
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dinotune.atomic import atomic_dir
from dinotune.backbones import Backbone
from dinotune.backbones.lora import LoraConfig, has_lora, merge_lora
from dinotune.config import BackboneConfig, StrictModel, save_resolved
from dinotune.data.config import DataConfig
from dinotune.data.datasets import build_datasets, class_weights, weighted_sampler
from dinotune.data.preprocessing import Preprocessing
from dinotune.errors import ConfigError, DataError
from dinotune.losses.distill import DistillConfig
from dinotune.metrics import classification_metrics, multilabel_metrics
from dinotune.model import Classifier, ModelCard, load_model, save_model
from dinotune.optim import OptimConfig
from dinotune.tasks.classification import ClassificationModule, Mode, RegularizationConfig, prepare_model
from dinotune.tasks.probe import LinearHead, parse_feature_choice
from dinotune.training.trainer import TrainerConfig, build_trainer
from dinotune.verbs.runs import RunLog, load_training_backbone, training_run_dir, write_json

log = logging.getLogger(__name__)


class EarlyStoppingConfig(StrictModel):
    enabled: bool = True
    monitor: str | None = Field(None, description="Metric to maximise (None: val/accuracy, val/map if multi-label).")
    patience: int = Field(5, ge=1, description="Validations without improvement before training stops.")
    min_delta: float = Field(0.0, ge=0)


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
        None, description="Train image side by epoch, e.g. {0: 224, 5: 512}; images are decoded at "
        "data.image_size and resized in the step.")
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
            if epoch < 0 or size % self.data.patch_size:
                raise ValueError(f"resolution_schedule {epoch}: {size} needs epoch >= 0 and a size that is a "
                                 f"multiple of data.patch_size={self.data.patch_size}")
        parse_feature_choice(self.feature_choice)
        return self


@dataclass
class FinetuneResult:
    run_dir: Path
    metrics: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Data: seeded, resumable, DDP-aware
# --------------------------------------------------------------------------------------------------


class EpochSeeded(Dataset):
    """Keys `epoch * n + index` -> item `index`, with augmentations seeded by (seed, epoch, index)."""

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base, self.seed, self.n = base, seed, len(base)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(int(key), self.n)
        pipeline = getattr(getattr(self.base, "transform", None), "pipeline", None)
        if pipeline is not None and hasattr(pipeline, "set_random_seed"):
            pipeline.set_random_seed((self.seed * 7919 + epoch * 1_000_003 + index) % 2**31)
        return self.base[index]


class ResumableSampler(DistributedSampler):
    """Shuffle by (seed, epoch), pad and shard like `DistributedSampler`, yield `EpochSeeded` keys.

    Being a DistributedSampler, Lightning does not wrap it; `ShardAndResume` sets the rank and world
    size once they are known and, on a mid-epoch resume, how many of this epoch's samples to skip.
    """

    def __init__(self, dataset: Dataset, seed: int, indices: list[int] | None = None) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
        self.indices, self.skip = indices, 0

    def configure(self, world_size: int, rank: int) -> None:
        self.num_replicas, self.rank = world_size, rank
        self.num_samples = math.ceil(len(self.dataset) / world_size)  # type: ignore[arg-type]
        self.total_size = self.num_samples * world_size

    def __iter__(self):
        n = len(self.dataset)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = self.indices if self.indices is not None else torch.randperm(n, generator=gen).tolist()
        order = (order * math.ceil(self.total_size / len(order)))[: self.total_size]
        mine = order[self.rank : self.total_size : self.num_replicas][self.skip :]
        self.skip = 0
        return iter([self.epoch * n + i for i in mine])


class ShardAndResume(L.Callback):
    def __init__(self, sampler: ResumableSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.sampler.configure(trainer.world_size, trainer.global_rank)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if 0 < done < trainer.num_training_batches:
            self.sampler.skip = done * self.batch_size


# --------------------------------------------------------------------------------------------------
# Model export
# --------------------------------------------------------------------------------------------------


def plain_copy(model: Classifier) -> Classifier:
    """A CPU copy with LoRA merged and no drop path: what a model folder stores."""
    net = copy.deepcopy(model).cpu().eval()
    if has_lora(net):
        merge_lora(net.backbone)
    net.backbone.hf.config.drop_path_rate = 0.0
    return net


class BestModelExport(L.Callback):
    """Write the model folder `folder` whenever the monitored validation metric improves."""

    def __init__(self, folder: Path, monitor: str, card: Callable[[], ModelCard]) -> None:
        self.folder, self.monitor, self.card = folder, monitor, card
        self.best: float = -math.inf
        self.best_epoch, self.best_step = -1, -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or not float(value) > self.best:
            return
        self.best, self.best_epoch, self.best_step = float(value), trainer.current_epoch, trainer.global_step
        if trainer.is_global_zero:
            card = self.card()
            card.metrics = {self.monitor: self.best, "epoch": self.best_epoch, "step": self.best_step}
            with atomic_dir(self.folder, overwrite=True) as tmp:
                save_model(tmp, plain_copy(pl_module.deployable()), card, save_backbone=True)  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.best_step = state["best"], state["best_epoch"], state["best_step"]


# --------------------------------------------------------------------------------------------------
# The verb
# --------------------------------------------------------------------------------------------------


def preprocessing_for(cfg: FinetuneConfig, backbone: Backbone) -> Preprocessing:
    if cfg.data.resize == "keep":
        raise DataError("data.resize=keep gives images of different sizes; fine-tuning batches need crop or pad.")
    if cfg.data.image_size % backbone.input_multiple:
        raise ConfigError(f"data.image_size={cfg.data.image_size} must be a multiple of "
                          f"{backbone.input_multiple} for this backbone.")
    scaling = cfg.data.scaling.model_dump(exclude_none=True)
    return Preprocessing(image_size=cfg.data.image_size, resize=cfg.data.resize, channels=cfg.data.channels,
                         mean=tuple(cfg.data.mean or backbone.info.mean), std=tuple(cfg.data.std or backbone.info.std),
                         scaling=scaling if cfg.data.scaling.mode != "fixed" or cfg.data.scaling.divisor else {})


def new_head(backbone: Backbone, num_classes: int, feature_choice: str, multilabel: bool, seed: int) -> LinearHead:
    """A fresh head without standardisation (mean 0, std 1): the features move during fine-tuning."""
    widths = {"cls": backbone.embed_dim, "patch_mean": backbone.embed_dim, "cls_last4": 4 * backbone.embed_dim}
    dim = sum(widths[k] for k in parse_feature_choice(feature_choice))
    weight = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed)) * 0.01
    return LinearHead(weight, torch.zeros(num_classes), torch.zeros(dim), torch.ones(dim),
                      feature_choice=feature_choice, multilabel=multilabel)


def _teacher(cfg: FinetuneConfig, classes: list[str], prep: Preprocessing) -> tuple[Classifier, tuple]:
    teacher, card = load_model(cfg.distill.teacher, device="cpu")  # type: ignore[arg-type]
    if card.classes != classes:
        raise DataError(f"distill.teacher '{cfg.distill.teacher}' was trained on classes {card.classes}, "
                        f"not this dataset's {classes}.")
    s_mean, s_std = torch.tensor(prep.mean), torch.tensor(prep.std)
    t_mean, t_std = torch.tensor(card.preprocessing.mean), torch.tensor(card.preprocessing.std)
    return teacher, (s_std / t_std, (s_mean - t_mean) / t_std)  # raw = x * s_std + s_mean, then the teacher's


def _loaders(cfg: FinetuneConfig, spec: Any, sets: dict[str, Dataset]) -> tuple[DataLoader, ResumableSampler,
                                                                                  dict[str, DataLoader]]:
    train = sets.get("train")
    if train is None or "val" not in sets or len(train) == 0:  # type: ignore[arg-type]
        raise DataError(f"'{cfg.data.root}' needs train and val images (found splits: {sorted(sets)}).")
    indices = None
    if cfg.data.weighted_sampler:
        labels = [s.label for s in spec.splits["train"]]
        indices = list(weighted_sampler(labels, seed=cfg.trainer.seed))
    sampler = ResumableSampler(train, cfg.trainer.seed, indices)
    workers = cfg.data.num_workers
    common = {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}
    drop_last = len(train) > cfg.batch_size  # type: ignore[arg-type]
    loader = DataLoader(EpochSeeded(train, cfg.trainer.seed), batch_size=cfg.batch_size, sampler=sampler,
                        drop_last=drop_last, **common)
    evals = {name: DataLoader(ds, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False, **common)
             for name, ds in sets.items() if name in ("val", "test") and len(ds)}  # type: ignore[arg-type]
    return loader, sampler, evals


def run_finetune(cfg: FinetuneConfig, resume: bool = False, callbacks: Iterable[L.Callback] = ()) -> FinetuneResult:
    """Train, keep the best model, evaluate it on val/test. `resume`: continue from checkpoints/last.ckpt."""
    start = time.perf_counter()
    run_dir, ckpt = training_run_dir(cfg.out, "finetune", resume)
    run = RunLog(run_dir)
    save_resolved(cfg, run_dir)
    backbone = load_training_backbone(cfg.backbone, cfg.data.channels, cfg.trainer.seed)
    prep = preprocessing_for(cfg, backbone)
    spec, sets = build_datasets(cfg.data, prep.mean, prep.std, run_dir)
    if spec.task != "classify":
        raise DataError(f"'{cfg.data.root}' looks like a {spec.task} dataset; fine-tuning here needs class labels.")
    head = new_head(backbone, spec.num_classes, cfg.feature_choice, spec.multilabel, cfg.trainer.seed)
    model = Classifier(backbone, head)
    counts = prepare_model(model, cfg.mode, freeze_blocks=cfg.freeze_blocks, lora=cfg.lora,
                           drop_path_rate=cfg.regularization.drop_path_rate,
                           activation_checkpointing=cfg.activation_checkpointing)
    teacher, teacher_norm = _teacher(cfg, spec.classes, prep) if cfg.mode == "distill" else (None, None)
    weights = class_weights([s.label for s in spec.splits["train"]], spec.num_classes) if cfg.data.class_weights \
        else None
    module = ClassificationModule(model, spec.num_classes, mode=cfg.mode, optim=cfg.optim,
                                  regularization=cfg.regularization, class_weights=weights,
                                  resolution_schedule=cfg.resolution_schedule, teacher=teacher,
                                  teacher_norm=teacher_norm, distill=cfg.distill, seed=cfg.trainer.seed)
    loader, sampler, evals = _loaders(cfg, spec, sets)
    monitor = cfg.early_stopping.monitor or module.monitor
    source = {"source": backbone.info.source, "arch": backbone.info.arch, "in_chans": backbone.info.in_chans,
              "seed": cfg.trainer.seed, "identity": backbone.info.identity}

    def card() -> ModelCard:
        return ModelCard(task="classify", classes=spec.classes, preprocessing=prep, backbone=dict(source), head={},
                         multilabel=spec.multilabel, license=backbone.info.license)

    best = BestModelExport(run_dir / "best", monitor, card)
    extra: list[L.Callback] = [ShardAndResume(sampler, cfg.batch_size), best, *callbacks]
    if cfg.early_stopping.enabled:
        from lightning.pytorch.callbacks import EarlyStopping

        extra.append(EarlyStopping(monitor=monitor, mode="max", patience=cfg.early_stopping.patience,
                                   min_delta=cfg.early_stopping.min_delta, check_on_train_epoch_end=False))
    trainer = build_trainer(cfg.trainer, run_dir, extra, fsdp_wrap=_fsdp_units(backbone))
    run.info(f"{cfg.mode}: {backbone.info.arch} ({backbone.info.source}), {spec.num_classes} classes, "
             f"{counts['trainable']:,} of {counts['total']:,} parameters trainable "
             f"({100 * counts['trainable'] / counts['total']:.2f}%)")
    if resume:
        run.info(f"resuming from {ckpt}" if ckpt else f"nothing to resume in {run_dir}; starting fresh")
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=evals["val"], ckpt_path=ckpt)
    metrics: dict[str, Any] = {}
    if trainer.is_global_zero:
        metrics = _finish(cfg, run_dir, module, card, best, spec, sets, counts, run)
        metrics |= {"train_seconds_this_session": round(time.perf_counter() - start, 2),
                    "epochs_run": trainer.current_epoch, "steps": trainer.global_step,
                    "resumed_from": str(ckpt or "")}
        write_json(run_dir / "metrics.json", metrics)
        run.info(" ".join(f"{k} {v:.4f}" for k, v in metrics["summary"].items()))
    return FinetuneResult(run_dir, metrics)


def _finish(cfg: FinetuneConfig, run_dir: Path, module: ClassificationModule, card: Callable[[], ModelCard],
            best: BestModelExport, spec: Any, sets: dict[str, Dataset], counts: dict[str, int],
            run: RunLog) -> dict[str, Any]:
    """Move the best model to the run folder, save the last one, evaluate the best on val and test."""
    if cfg.save_last_model:
        last_card = card()
        last_card.metrics = {"epoch": module.current_epoch, "step": module.global_step}
        with atomic_dir(run_dir / "last", overwrite=True) as tmp:
            save_model(tmp, plain_copy(module.deployable()), last_card, save_backbone=True)
    best_dir = run_dir / "best"
    if best_dir.is_dir():
        for name in ("model.json", "head.safetensors", "backbone"):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            (best_dir / name).replace(target)
        shutil.rmtree(best_dir)
    if not (run_dir / "model.json").is_file():  # training ended before its first validation
        run.warn("no validation ran (training shorter than an epoch): the run folder holds the last model")
        save_model(run_dir, plain_copy(module.deployable()), card(), save_backbone=True)
    model, _ = load_model(run_dir)
    report_split = "test" if "test" in sets and len(sets["test"]) else "val"  # type: ignore[arg-type]
    metrics: dict[str, Any] = {"classes": spec.classes, "report_split": report_split, "mode": cfg.mode,
                               "counts": {k: len(v) for k, v in sets.items()},  # type: ignore[arg-type]
                               "parameters": counts | {"trainable_fraction": counts["trainable"] / counts["total"]},
                               "best": {"monitor": best.monitor, "value": best.best, "epoch": best.best_epoch,
                                        "step": best.best_step}}
    key = "map" if spec.multilabel else "accuracy"
    summary: dict[str, float] = {}
    for split in ("val", "test"):
        if split not in sets or not len(sets[split]):  # type: ignore[arg-type]
            continue
        probs, labels, paths = predict_split(model, sets[split], cfg.eval_batch_size or cfg.batch_size)
        metrics[split] = (multilabel_metrics if spec.multilabel else classification_metrics)(probs, labels,
                                                                                            spec.classes)
        summary[f"{split}/{key}"] = metrics[split][key]
        if split == report_split:
            from dinotune.verbs.probe import write_predictions

            write_predictions(run_dir / "predictions.csv", paths, labels, probs, spec)
    metrics["summary"] = summary
    return metrics


@torch.no_grad()
def predict_split(model: Classifier, dataset: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Probabilities, labels and paths of a whole split, in dataset order."""
    from dinotune.device import autocast

    device = next(model.parameters()).device
    probs, labels, paths = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with autocast(device):
            probs.append(model.predict_proba(batch["image"].to(device)).float().cpu())
        labels.append(batch["label"])
        paths += [Path(p) for p in batch["path"]]
    return torch.cat(probs), torch.cat(labels), paths


def _fsdp_units(backbone: Backbone) -> set[type[torch.nn.Module]]:
    """FSDP shards each transformer block / ConvNeXt stage as one unit."""
    return {type(m) for m in backbone.hf.modules() if type(m).__name__.endswith(("ViTLayer", "ConvNextStage"))}
