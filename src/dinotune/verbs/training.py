"""The flow every supervised training verb shares: fit with the best-model callback, then keep the best.

`training_run` opens the run (folder, log, backbone, preprocessing); `fit_and_evaluate` is the tail:
`fit_best` trains a `TaskModule` with early stopping and a model folder that follows the best
validation score; `promote_best` moves that folder's files into the run folder (and saves the last
model beside it), so a finished run folder is a model folder that predict/evaluate/export/serve load;
then the saved model is evaluated and metrics.json written. A verb only builds its data and model.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
from pydantic import Field

from dinotune.atomic import atomic_dir
from dinotune.backbones import Backbone
from dinotune.backbones.lora import LoraConfig
from dinotune.config import BackboneConfig, StrictModel, save_resolved
from dinotune.data.preprocessing import Preprocessing
from dinotune.model import CARD_FILE, ModelCard, plain_copy, save_model
from dinotune.run_folder import RunLog, new_run_dir, training_output, write_json
from dinotune.training.base import TaskModule
from dinotune.training.callbacks import BestModelExport
from dinotune.training.modes import DenseMode
from dinotune.training.optim import OptimConfig
from dinotune.training.trainer import TrainerConfig, build_trainer, resume_path
from dinotune.verbs.common import Result, load_training_backbone, preprocessing_for

BEST_DIR, LAST_DIR = "best", "last"
DERIVED = ("evaluation", "export")  # folders made from the run's model by evaluate / export


class EarlyStoppingConfig(StrictModel):
    enabled: bool = True
    monitor: str | None = Field(
        None, description="Metric to maximise (None: the task's own, e.g. val/accuracy; depth: val/absrel, minimised)."
    )
    patience: int = Field(5, ge=1, description="Validations without improvement before training stops.")
    min_delta: float = Field(0.0, ge=0)


class DenseTrainingConfig(StrictModel):
    """What every dense-prediction training job (segment, depth, detect) is configured by beyond its own
    `task`, `data`, `head`, `loss` and `inference`: one definition, so the three accept the same keys."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    mode: DenseMode = Field("linear", description="linear (frozen backbone) | finetune | partial | lora.")
    freeze_blocks: int = Field(0, ge=0, description="partial: freeze the embeddings and this many first blocks.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    batch_size: int = Field(8, ge=1, description="Training images (crops) per device per step.")
    eval_batch_size: int | None = Field(None, ge=1, description="Validation batch during training.")
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(max_epochs=20))
    early_stopping: EarlyStoppingConfig = Field(default_factory=lambda: EarlyStoppingConfig(patience=10))
    save_last_model: bool = Field(False, description="Also write the final model to out/last/.")


@contextlib.contextmanager
def training_run(cfg: Any, kind: str, resume: bool) -> Iterator[tuple[Path, RunLog, Backbone, Preprocessing]]:
    """The opening every training verb shares: the guarded run folder (locked, `--resume` rule), its log and
    resolved config, the seeded backbone with the data's channels, and the card's preprocessing."""
    run_dir = Path(cfg.out or new_run_dir(kind))
    with training_output(run_dir, resume=resume, has_checkpoint=resume_path(run_dir) is not None):
        run = RunLog(run_dir)
        save_resolved(cfg, run_dir)
        backbone = load_training_backbone(cfg.backbone, cfg.data, cfg.trainer.seed)
        yield run_dir, run, backbone, preprocessing_for(cfg.data, backbone)


def fit_best(
    module: TaskModule,
    loader: Any,
    val_loader: Any,
    card: Callable[[], ModelCard],
    *,
    run_dir: Path,
    trainer_cfg: TrainerConfig,
    early_stopping: EarlyStoppingConfig,
    save_backbone: bool,
    resume: bool,
    callbacks: Iterable[L.Callback] = (),
) -> tuple[L.Trainer, BestModelExport]:
    """Train (continuing from the run's last checkpoint when `resume`), tracking the best model in best/."""
    monitor = early_stopping.monitor or module.monitor
    mode = module.monitor_mode if monitor == module.monitor else "max"
    best = BestModelExport(run_dir / BEST_DIR, monitor, card, save_backbone, mode)
    extra: list[L.Callback] = [best, *callbacks]
    if early_stopping.enabled:
        from lightning.pytorch.callbacks import EarlyStopping

        extra.append(
            EarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=early_stopping.patience,
                min_delta=early_stopping.min_delta,
                check_on_train_epoch_end=False,
            )
        )
    trainer = build_trainer(trainer_cfg, run_dir, extra, fsdp_wrap=module.model.backbone.fsdp_units())
    ckpt = resume_path(run_dir) if resume else None
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=ckpt)
    return trainer, best


def promote_best(
    run_dir: Path,
    module: TaskModule,
    card: Callable[[], ModelCard],
    *,
    save_backbone: bool,
    save_last: bool,
    run: RunLog,
) -> None:
    """The best model's files into the run folder; the last model into last/ when asked."""
    if save_last:
        last_card = card()
        last_card.metrics = {"epoch": module.current_epoch, "step": module.global_step}
        with atomic_dir(run_dir / LAST_DIR, overwrite=True) as tmp:
            save_model(tmp, plain_copy(module.deployable()), last_card, save_backbone)
    best_dir = run_dir / BEST_DIR
    if best_dir.is_dir():
        stale = [name for name in DERIVED if (run_dir / name).exists() and (run_dir / CARD_FILE).is_file()]
        for item in best_dir.iterdir():
            target = run_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
        shutil.rmtree(best_dir)
        for name in stale:  # made from the model this one replaces: they would report or serve the wrong model
            shutil.rmtree(run_dir / name)
            run.warn(f"removed {run_dir / name}: it was made from the previous best model; run it again")
    elif (run_dir / CARD_FILE).is_file():
        run.info("no better model in this session: the run folder keeps its best model")
    else:
        run.warn("no validation ran (training shorter than an epoch): the run folder holds the last model")
        save_model(run_dir, plain_copy(module.deployable()), card(), save_backbone)


def training_metrics(
    trainer: L.Trainer, best: BestModelExport, counts: dict[str, int], seconds: float, resumed: bool
) -> dict[str, Any]:
    """The fields every training run's metrics.json carries (compare reads them)."""
    return {
        "parameters": counts | {"trainable_fraction": counts["trainable"] / max(1, counts["total"])},
        "best": {"monitor": best.monitor, "value": best.best, "epoch": best.best_epoch, "step": best.best_step},
        "train_seconds": round(seconds, 2),
        "epochs_run": trainer.current_epoch,
        "steps": trainer.global_step,
        "resumed": resumed,
    }


def fit_and_evaluate(
    cfg: Any,
    module: TaskModule,
    loaders: tuple[Any, Any],
    card: Callable[[], ModelCard],
    *,
    run_dir: Path,
    run: RunLog,
    counts: dict[str, int],
    started: float,
    resume: bool,
    save_backbone: bool,
    evaluate: Callable[[], dict[str, Any]],
    report: Callable[[dict[str, Any]], None] | None = None,
    callbacks: Iterable[L.Callback] = (),
) -> Result:
    """Fit (`fit_best`), then on rank 0: promote the best model, `evaluate` the saved one, add the training
    fields, write metrics.json, `report` it, and log the summary line."""
    trainer, best = fit_best(module, loaders[0], loaders[1], card, run_dir=run_dir, trainer_cfg=cfg.trainer,
                             early_stopping=cfg.early_stopping, save_backbone=save_backbone, resume=resume,
                             callbacks=callbacks)  # fmt: skip
    metrics: dict[str, Any] = {}
    if trainer.is_global_zero:
        promote_best(run_dir, module, card, save_backbone=save_backbone, save_last=cfg.save_last_model, run=run)
        metrics = evaluate() | training_metrics(trainer, best, counts, time.perf_counter() - started, resume)
        write_json(run_dir / "metrics.json", metrics)
        if report is not None:
            report(metrics)
        run.info(" ".join(f"{k} {v:.4f}" for k, v in metrics.get("summary", {}).items()))
    return Result(run_dir, metrics)
