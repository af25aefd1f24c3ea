"""One `lightning.Trainer` factory for every training command (continued pretraining, fine-tuning).

`build_trainer(cfg, run_dir)` gives a Trainer that:
- picks the device and precision itself (`precision="auto"`: bf16-mixed on CUDA, fp32 on CPU, where bf16
  is several times slower) and distributes through Lightning strategies (`ddp`, `fsdp`);
- writes checkpoints under `run_dir/checkpoints/`: `last.ckpt` (each epoch's last batch and wherever
  training stops, see `LastCheckpoint`) plus periodic `step=NNNNNNN.ckpt` files, each written
  atomically (see `AtomicCheckpointIO`), and loaded with `weights_only=True` whatever torch's default
  (see `checkpoints`); temporary files of writers killed earlier are removed when the trainer is built;
- logs to CSV under `run_dir/logs/` always, and to TensorBoard / MLflow / W&B on request.

Resume: `trainer.fit(module, data, ckpt_path=resume_path(run_dir))` restores weights, optimizer, loop
counters and callback states (from `last.ckpt`, or the newest intact periodic checkpoint if it is
damaged); anything else a module needs (EMA teachers, loss centres) must be a parameter or buffer, or be
saved in `on_save_checkpoint`.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from pydantic import Field, model_validator
from torch import nn

from dinotune.atomic import atomic_path, remove_stale_temps
from dinotune.config import StrictModel
from dinotune.errors import ConfigError
from dinotune.training.callbacks import PlainProgress
from dinotune.training.checkpoints import choose_checkpoint, load_checkpoint_file

LoggerName = Literal["csv", "tensorboard", "mlflow", "wandb"]
CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


class TrainerConfig(StrictModel):
    """How long, where and how to train; shared by every training command."""

    max_epochs: int | None = Field(None, ge=1, description="Stop after this many epochs (None: use max_steps).")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: use max_epochs).")
    max_time_minutes: float | None = Field(None, gt=0, description="Also stop after this wall time.")
    accelerator: str = Field("auto", description="auto, cpu, gpu/cuda, mps.")
    devices: int | str | list[int] = Field("auto", description="Device count, list of ids, or auto.")
    strategy: Literal["auto", "ddp", "fsdp"] = Field("auto", description="Multi-device strategy.")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto: bf16-mixed on CUDA, 32-true otherwise."
    )
    accumulate_grad_batches: int = Field(1, ge=1, description="Batches per optimizer step.")
    gradient_clip_val: float | None = Field(3.0, gt=0, description="Clip the gradient norm to this (None: off).")
    log_every_n_steps: int = Field(10, ge=1)
    loggers: list[LoggerName] = Field(default_factory=lambda: ["csv"], description="CSV is always on.")
    checkpoint_every_n_steps: int | None = Field(
        None, ge=1, description="Periodic checkpoints every N optimizer steps (None: at each epoch end)."
    )
    keep_checkpoints: int = Field(3, ge=-1, description="Periodic checkpoints kept (-1: all); last.ckpt always.")
    seed: int = 0
    deterministic: bool = Field(False, description="Deterministic kernels (slower; for exact reproduction).")
    progress_bar: bool = True
    model_summary: bool = Field(False, description="Print Lightning's table of modules and parameter counts.")

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if self.max_epochs is None and self.max_steps == -1:
            raise ValueError("set trainer.max_epochs or trainer.max_steps (schedules need a known length)")
        return self


def _keep_on_cpu(storage: Any, location: str) -> Any:
    """Lightning's default map_location: tensors stay on the CPU and the strategy moves them, rather than
    every rank loading onto the device the checkpoint was saved from."""
    return storage


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints go to a temporary file beside the target, are fsynced, then renamed; every
    checkpoint is loaded with `weights_only=True`.

    Lightning's own save (2.6) writes to a temporary file in the *system* temp folder and then
    `shutil.move`s it: when that folder is on another file system the move is a copy, and a crash
    mid-copy leaves a torn `last.ckpt`. Remote paths keep Lightning's behaviour for saving. Its load
    leaves `weights_only` to torch's default, which `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` turns off.
    """

    def load_checkpoint(
        self, path: Any, map_location: Any = _keep_on_cpu, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's `weights_only` argument is ignored: always True."""
        if not _is_local_file_protocol(str(path)):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(path, map_location=map_location)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class LastCheckpoint(Checkpoint):
    """Owns `last.ckpt`: written at batch ends, the state Lightning (2.6) resumes exactly.

    Saved after the last batch of every epoch and whenever training stops (max_steps, max_time, a
    callback setting `should_stop`) or a periodic checkpoint is due. Never in `on_train_epoch_end`:
    Lightning resumes such a state as a still-running epoch and cuts the next epoch short. Being a
    `Checkpoint`, it runs after the other callbacks (the Timer included), so it sees their stop requests.
    """

    def __init__(self, path: Path, every_n_steps: int | None = None) -> None:
        self.path, self.every_n_steps = path, every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        at_max = 0 < trainer.max_steps <= step
        periodic = bool(self.every_n_steps) and step % self.every_n_steps == 0
        epoch_end = trainer.fit_loop.epoch_loop.batch_progress.current.processed >= trainer.num_training_batches
        if trainer.should_stop or at_max or periodic or epoch_end:
            trainer.save_checkpoint(self.path)


def resolve_precision(cfg: TrainerConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    wants_gpu = cfg.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if wants_gpu and torch.cuda.is_available() else "32-true"


def _loggers(names: Iterable[str], run_dir: Path) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(run_dir, name="logs")]
    for name in dict.fromkeys(names):
        if name == "csv":
            continue
        try:
            if name == "tensorboard":
                import tensorboard  # noqa: F401
                from lightning.pytorch.loggers import TensorBoardLogger

                loggers.append(TensorBoardLogger(run_dir, name="tensorboard"))
            elif name == "mlflow":
                import mlflow  # noqa: F401
                from lightning.pytorch.loggers import MLFlowLogger

                loggers.append(MLFlowLogger(experiment_name="dinotune", save_dir=str(run_dir / "mlruns")))
            elif name == "wandb":
                import wandb  # noqa: F401
                from lightning.pytorch.loggers import WandbLogger

                loggers.append(WandbLogger(save_dir=str(run_dir), project="dinotune"))
        except ImportError:
            raise ConfigError(
                f"trainer.loggers includes '{name}' but its package is not installed; run: "
                f'pip install "dinotune[{name}]" (or remove it from trainer.loggers)'
            ) from None
    return loggers


def _strategy(cfg: TrainerConfig, fsdp_wrap: set[type[nn.Module]] | None) -> Any:
    if cfg.strategy != "fsdp":
        return cfg.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy=fsdp_wrap, use_orig_params=True) if fsdp_wrap else FSDPStrategy()


def build_trainer(
    cfg: TrainerConfig,
    run_dir: str | os.PathLike,
    extra_callbacks: Iterable[Callback] = (),
    fsdp_wrap: set[type[nn.Module]] | None = None,
) -> L.Trainer:
    """A configured Trainer writing into `run_dir`; also seeds every RNG (workers included).

    `fsdp_wrap`: module classes FSDP shards as separate units (e.g. transformer blocks); a module
    whose parameter pairs must line up across copies (an EMA teacher) needs this.
    """
    run_dir = Path(run_dir)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # Lightning's INFO notes: with --verbose only
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    for folder in (run_dir, ckpt_dir):
        remove_stale_temps(folder)  # of a run killed while writing a checkpoint or an export
    periodic = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="{step:07d}",
        monitor="step",
        mode="max",
        save_top_k=cfg.keep_checkpoints,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        every_n_epochs=None if cfg.checkpoint_every_n_steps else 1,
        auto_insert_metric_name=True,
    )
    last = LastCheckpoint(ckpt_dir / LAST, cfg.checkpoint_every_n_steps)
    callbacks: list[Callback] = [*extra_callbacks, periodic, last]
    if cfg.progress_bar and not sys.stderr.isatty():
        callbacks.append(PlainProgress())  # a few plain lines instead of a bar
    return L.Trainer(
        max_epochs=cfg.max_epochs if cfg.max_epochs is not None else -1,
        max_steps=cfg.max_steps,
        max_time=datetime.timedelta(minutes=cfg.max_time_minutes) if cfg.max_time_minutes else None,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=_strategy(cfg, fsdp_wrap),
        precision=resolve_precision(cfg),  # type: ignore[arg-type]
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val,
        log_every_n_steps=cfg.log_every_n_steps,
        logger=_loggers(cfg.loggers, run_dir),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        deterministic=cfg.deterministic,
        enable_progress_bar=cfg.progress_bar and sys.stderr.isatty(),  # a bar redrawn into a log is noise
        enable_model_summary=cfg.model_summary,
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the one sampler (training.sampler) shards itself
    )


def resume_path(run_dir: str | os.PathLike) -> Path | None:
    """`run_dir/checkpoints/last.ckpt` if a previous run left one, else None (start fresh).

    A damaged `last.ckpt` falls back to the newest intact periodic checkpoint with a warning; a folder
    with none intact, or a file naming code to run, is a one-line CheckpointError.
    """
    return choose_checkpoint(Path(run_dir) / CHECKPOINT_DIR, LAST)
