"""The one best-model callback (the model folder follows the best validation score during training), and plain
progress lines where no progress bar can be drawn."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

from dinotune.atomic import atomic_dir
from dinotune.model import ModelCard, plain_copy, save_model

log = logging.getLogger(__name__)


class BestModelExport(L.Callback):
    """Write the model folder `folder` whenever the monitored validation metric improves (`mode`: max or min).

    Its state (best value, epoch, step) is saved in checkpoints, so a resumed run keeps its best model.
    """

    def __init__(
        self, folder: Path, monitor: str, card: Callable[[], ModelCard], save_backbone: bool, mode: str = "max"
    ) -> None:
        self.folder, self.monitor, self.card, self.save_backbone = folder, monitor, card, save_backbone
        self.sign = -1.0 if mode == "min" else 1.0  # compared as sign * value, so "min" needs no other branch
        self.best: float = -math.inf if mode != "min" else math.inf
        self.best_epoch, self.best_step = -1, -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or not self.sign * float(value) > self.sign * self.best:
            return
        self.best, self.best_epoch, self.best_step = float(value), trainer.current_epoch, trainer.global_step
        if trainer.is_global_zero:
            card = self.card()
            card.metrics = {self.monitor: self.best, "epoch": self.best_epoch, "step": self.best_step}
            with atomic_dir(self.folder, overwrite=True) as tmp:
                save_model(tmp, plain_copy(pl_module.deployable()), card, self.save_backbone)  # type: ignore[operator]

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_step = state.get("best_step", -1)


class PlainProgress(L.Callback):
    """For output that is not a terminal (a log file, CI): one line every tenth of the epochs with the figures a
    progress bar would show (a depth run logs 18 metrics; all of them stay in the logs and metrics.json), instead
    of a progress bar redrawn line by line."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        epoch = trainer.current_epoch + 1
        if not trainer.is_global_zero or (epoch % max(1, round((total or 100) / 10)) and epoch != total):
            return
        shown = set(trainer.progress_bar_metrics) or set(trainer.callback_metrics)  # the headline, not every metric
        metrics = {n: v for n, v in trainer.callback_metrics.items() if n in shown and "lr" not in n}
        figures = ", ".join(f"{name} {float(value):.4g}" for name, value in sorted(metrics.items())
                            if getattr(value, "numel", lambda: 1)() == 1)  # fmt: skip
        log.info("epoch %d/%s (step %d): %s", epoch, total or "?", trainer.global_step, figures)
