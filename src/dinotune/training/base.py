"""The small base every supervised task module builds on (in the spirit of torchgeo's base task).

A task supplies `_shared_step(batch, stage, batch_idx) -> loss` and its `monitor` metric; the base owns
the plain model (what predict/export load), the modes of its parts, per-step seeding for exact resume,
step dispatch and the optimizer: AdamW groups with layer-wise decay and the configured schedule.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from dinotune.training.modes import Mode
from dinotune.training.optim import OptimConfig, build_optimizer, build_scheduler, param_groups


class TaskModule(L.LightningModule):
    """Trains `model` (a `Classifier` or `Segmenter` prepared with `prepare_model`)."""

    monitor: str
    monitor_mode: str = "max"  # "min" for errors (depth's val/absrel)

    def __init__(self, model: nn.Module, *, mode: Mode, optim: OptimConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.model, self.mode, self.seed = model, mode, seed
        self.optim_cfg = optim or OptimConfig()

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def deployable(self) -> nn.Module:
        """The network to evaluate and save."""
        return self.model

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Backbones load in eval mode and Lightning restores recorded submodule modes (also on resume):
        set the intended ones before every step."""
        if not self.model.head.training or (self.mode != "linear" and not self.model.backbone.training):
            self.model.train()
        if self.mode == "linear" and self.model.backbone.training:
            self.model.backbone.eval()

    def step_generator(self, batch_idx: int) -> torch.Generator:
        """Seed every random op of a training step from (seed, epoch, batch, rank): exact replay after resume.
        Drop path and dropout draw from the global generator, so it is seeded too."""
        value = (self.seed * 1_000_003 + self.current_epoch * 100_003 + batch_idx * 1009 + self.global_rank) % 2**31
        torch.manual_seed(value)
        return torch.Generator().manual_seed(value)

    def _shared_step(self, batch: dict[str, Any], stage: str, batch_idx: int) -> Tensor:
        raise NotImplementedError

    def _epoch_end(self, stage: str) -> None:
        """Log the epoch's metrics of `stage` from the state the steps accumulated (tasks that keep some)."""

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def sum_over_ranks(self, total: Tensor) -> Tensor:
        """`total` summed over the DDP processes (itself with one)."""
        return self.trainer.strategy.reduce(total.clone(), reduce_op="sum") if self.trainer.world_size > 1 else total

    def log_loss(self, stage: str, value: Tensor, batch_size: int, name: str = "loss", bar: bool = True) -> None:
        """`{stage}/{name}`: per step while training (on the progress bar), else the epoch mean over ranks."""
        on_step = stage == "train"
        self.log(f"{stage}/{name}", value.detach(), on_step=on_step, on_epoch=not on_step, prog_bar=bar,
                 sync_dist=not on_step, batch_size=batch_size)  # fmt: skip

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test", batch_idx)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        groups = param_groups(
            self.model.backbone,
            [self.model.head],
            lr=cfg.lr,
            head_lr=cfg.head_lr,
            layer_decay=cfg.layer_decay,
            weight_decay=cfg.weight_decay,
        )
        optimizer = build_optimizer(groups, cfg)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = build_scheduler(optimizer, cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
