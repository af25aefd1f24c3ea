"""Training a `DepthModel` on the shared `TaskModule` base: the masked SILog loss and the per-epoch depth
metrics (val/absrel, minimised, is the monitored metric); optimizer, seeding and modes come from the base."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dinotune.losses.depth import DepthLoss, DepthLossConfig
from dinotune.metrics.depth import NAMES, image_metrics
from dinotune.model.depther import DepthModel
from dinotune.training.base import TaskModule
from dinotune.training.modes import DenseMode
from dinotune.training.optim import OptimConfig


class DepthModule(TaskModule):
    """Trains `model` (prepared with `prepare_model`) on batches of {"image", "depth"} (0 = invalid)."""

    monitor_mode = "min"

    def __init__(
        self,
        model: DepthModel,
        *,
        min_depth: float,
        max_depth: float,
        mode: DenseMode = "linear",
        optim: OptimConfig | None = None,
        loss: DepthLossConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, mode=mode, optim=optim, seed=seed)
        self.loss_fn = DepthLoss(loss)
        self.min_depth, self.max_depth = min_depth, max_depth
        self.monitor = "val/absrel"
        for stage in ("train", "val", "test"):  # per-image metric sums and the image count; reset every epoch
            self.register_buffer(f"{stage}_sums", torch.zeros(len(NAMES) + 1, dtype=torch.float64), persistent=False)

    def _shared_step(self, batch: dict[str, Any], stage: str, batch_idx: int) -> Tensor:
        target = batch["depth"].float()
        valid = (target > self.min_depth) & (target <= self.max_depth)
        if stage == "train":
            self.step_generator(batch_idx)  # seeds dropout / drop path for exact replay after resume
        pred = self.model(batch["image"])[:, 0]
        loss = self.loss_fn(pred, target, valid)
        sums = getattr(self, f"{stage}_sums")
        for p, t, v in zip(pred.detach(), target, valid, strict=True):
            values = image_metrics(p, t, v, self.min_depth, self.max_depth)
            if values is not None:
                sums[:-1] += values.to(sums.device)
                sums[-1] += 1
        self.log_loss(stage, loss, target.shape[0])
        return loss

    def _epoch_end(self, stage: str) -> None:
        sums = getattr(self, f"{stage}_sums")
        total = self.sum_over_ranks(sums)
        means = total[:-1] / total[-1].clamp_min(1)
        for name, value in zip(NAMES, means.tolist(), strict=True):
            self.log(
                f"{stage}/{name}", float(value), prog_bar=name == "absrel" and stage != "train", rank_zero_only=False
            )
        sums.zero_()
