"""Training a `Segmenter` as a Lightning module, mirroring `tasks.classification.ClassificationModule`.

The network stays the plain-PyTorch `Segmenter` that predict/export load; this module adds the loss,
the per-epoch confusion matrix (val/miou is the monitored metric), and the optimizer groups and
schedule of `dinotune.optim` (layer-wise decay on the backbone, `head_lr` on the head). Modes and
their parameter freezing come from `tasks.classification.prepare_model`.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from dinotune.optim import OptimConfig, build_optimizer, build_scheduler, param_groups
from dinotune.segmentation.losses import LossConfig, SegmentationLoss
from dinotune.segmentation.metrics import confusion_matrix, scores
from dinotune.segmentation.model import Segmenter

SegMode = Literal["linear", "finetune", "partial", "lora"]


class SegmentationModule(L.LightningModule):
    """Trains `model` (prepared with `prepare_model`) on batches of {"image", "mask"}."""

    def __init__(self, model: Segmenter, num_classes: int, *, mode: SegMode = "linear",
                 optim: OptimConfig | None = None, loss: LossConfig | None = None,
                 class_weights: Tensor | None = None, ignore_index: int = 255, seed: int = 0) -> None:
        super().__init__()
        self.model, self.num_classes, self.mode = model, num_classes, mode
        self.optim_cfg = optim or OptimConfig()
        self.loss_fn = SegmentationLoss(loss, class_weights, ignore_index)
        self.ignore_index, self.seed = ignore_index, seed
        self.monitor = "val/miou"
        # a buffer, so it follows the device and is part of no optimizer; reset every epoch
        for stage in ("train", "val", "test"):
            self.register_buffer(f"{stage}_cm", torch.zeros(num_classes, num_classes, dtype=torch.long),
                                 persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def deployable(self) -> Segmenter:
        return self.model

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Backbones load in eval mode and Lightning restores recorded modes: set the intended ones."""
        if not self.model.head.training or (self.mode != "linear" and not self.model.backbone.training):
            self.model.train()
        if self.mode == "linear" and self.model.backbone.training:
            self.model.backbone.eval()

    def _shared_step(self, batch: dict[str, Any], stage: str, batch_idx: int) -> Tensor:
        images, masks = batch["image"], batch["mask"].long()
        if stage == "train":  # drop path / dropout draw from the global generator: seed per step
            value = (self.seed * 1_000_003 + self.current_epoch * 100_003 + batch_idx * 1009 + self.global_rank)
            torch.manual_seed(value % 2**31)
        logits = self.model(images)
        loss = self.loss_fn(logits, masks)
        cm = getattr(self, f"{stage}_cm")
        cm += confusion_matrix(logits.detach().argmax(1), masks, self.num_classes, self.ignore_index).to(cm.device)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss.detach(), on_step=on_step, on_epoch=not on_step, prog_bar=True,
                 sync_dist=not on_step, batch_size=images.shape[0])
        return loss

    def _epoch_end(self, stage: str) -> None:
        cm = getattr(self, f"{stage}_cm")
        total = self.trainer.strategy.reduce(cm.clone(), reduce_op="sum") if self.trainer.world_size > 1 else cm
        result = scores(total)
        for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
            self.log(f"{stage}/{key}", float(result[key]), prog_bar=key == "miou" and stage != "train",
                     rank_zero_only=False)
        cm.zero_()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test", batch_idx)

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self) -> dict[str, Any]:
        cfg, backbone = self.optim_cfg, self.model.backbone
        groups = param_groups(backbone, backbone.n_blocks, [self.model.head], lr=cfg.lr, head_lr=cfg.head_lr,
                              layer_decay=cfg.layer_decay, weight_decay=cfg.weight_decay)
        optimizer = build_optimizer(groups, cfg)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = build_scheduler(optimizer, cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["SegMode", "SegmentationModule"]
