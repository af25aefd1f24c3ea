"""Training a `Segmenter` on the shared `TaskModule` base: the loss and the per-epoch confusion matrix
(val/miou is the monitored metric); optimizer, seeding and modes come from the base."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dinotune.heads.mask2former import Mask2FormerLossConfig
from dinotune.losses.mask2former import Mask2FormerLoss
from dinotune.losses.segmentation import SegmentationLoss, SegmentationLossConfig
from dinotune.metrics import confusion_matrix, scores
from dinotune.model.segmenter import MaskSegmenter, Segmenter
from dinotune.training.base import TaskModule
from dinotune.training.modes import DenseMode
from dinotune.training.optim import OptimConfig


class SegmentationModule(TaskModule):
    """Trains `model` (prepared with `prepare_model`) on batches of {"image", "mask"}."""

    def __init__(
        self,
        model: Segmenter,
        num_classes: int,
        *,
        mode: DenseMode = "linear",
        optim: OptimConfig | None = None,
        loss: SegmentationLossConfig | None = None,
        class_weights: Tensor | None = None,
        ignore_index: int = 255,
        seed: int = 0,
        set_loss: Mask2FormerLossConfig | None = None,
    ) -> None:
        super().__init__(model, mode=mode, optim=optim, seed=seed)
        self.num_classes = num_classes
        self.loss_fn = SegmentationLoss(loss, class_weights, ignore_index)
        if isinstance(model, MaskSegmenter):  # Mask2Former: a set loss on the head's raw outputs
            self.set_loss = Mask2FormerLoss(
                **(set_loss or Mask2FormerLossConfig()).model_dump(), ignore_index=ignore_index
            )
        self.ignore_index = ignore_index
        self.monitor = "val/miou"
        # a buffer, so it follows the device and is part of no optimizer; reset every epoch
        for stage in ("train", "val", "test"):
            self.register_buffer(
                f"{stage}_cm", torch.zeros(num_classes, num_classes, dtype=torch.long), persistent=False
            )

    def _shared_step(self, batch: dict[str, Any], stage: str, batch_idx: int) -> Tensor:
        masks = batch["mask"].long()
        generator = self.step_generator(batch_idx) if stage == "train" else None
        if isinstance(self.model, MaskSegmenter):
            logits, loss = self._set_step(batch["image"], masks, generator)
        else:
            if "maps" in batch:  # cached dense features of a frozen backbone (features.dense)
                logits = self.model.forward_maps(batch["maps"], masks.shape[-2:])
            else:
                logits = self.model(batch["image"])
            loss = self.loss_fn(logits, masks)
        cm = getattr(self, f"{stage}_cm")
        cm += confusion_matrix(logits.detach().argmax(1), masks, self.num_classes, self.ignore_index).to(cm.device)
        self.log_loss(stage, loss, masks.shape[0])
        return loss

    def _set_step(self, images: Tensor, masks: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Mask2Former: the set loss on the raw outputs (aggregated classes), and the semantic scores.
        Crops whose sides are not multiples of 32 are padded (masks with ignore_index)."""
        if self.model.training:  # Lightning restores recorded module modes: frozen head parts back to eval
            self.model.head.train()
        h, w = images.shape[-2:]
        multiple = self.model.input_multiple
        pad = (0, (-w) % multiple, 0, (-h) % multiple)
        images, masks = F.pad(images, pad), F.pad(masks, pad, value=self.ignore_index)
        outputs = self.model.outputs(images)
        loss = self.set_loss(outputs, masks, self.model.head.aggregation, generator)
        logits = self.model.head.semantic(outputs, tuple(images.shape[-2:]))[..., :h, :w]
        return logits, loss

    def _epoch_end(self, stage: str) -> None:
        cm = getattr(self, f"{stage}_cm")
        total = self.sum_over_ranks(cm)
        result = scores(total)
        for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
            self.log(
                f"{stage}/{key}", float(result[key]), prog_bar=key == "miou" and stage != "train", rank_zero_only=False
            )
        cm.zero_()
