"""Training a `Detector` on the shared `TaskModule` base: the FCOS loss, and COCO mAP on the validation
split every epoch (val/map, the monitored metric, by `dinotune.metrics.detection`), in the letterboxed
images' pixels (mAP is scale-invariant up to COCO's small/medium/large area split, which it is not
monitored on)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from dinotune.losses.fcos import FCOSLoss, FCOSLossConfig
from dinotune.metrics.detection import DetectionMetric
from dinotune.model.detector import Detector
from dinotune.training.base import TaskModule
from dinotune.training.modes import DenseMode
from dinotune.training.optim import OptimConfig


class DetectionModule(TaskModule):
    """Trains `model` (prepared with `prepare_model`) on `collate_detection` batches."""

    def __init__(
        self,
        model: Detector,
        classes: list[str],
        *,
        mode: DenseMode = "linear",
        optim: OptimConfig | None = None,
        loss: FCOSLossConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, mode=mode, optim=optim, seed=seed)
        self.loss_fn = FCOSLoss(model.num_classes, model.head.strides, loss)
        self.monitor = "val/map"
        self.metric = DetectionMetric(classes)

    def _shared_step(self, batch: dict[str, Any], stage: str, batch_idx: int) -> Tensor:
        if stage == "train":
            self.step_generator(batch_idx)  # drop path / dropout replay exactly after resume
        outputs, points = self.model(batch["image"])
        parts = self.loss_fn(outputs, points, batch["boxes"], batch["labels"])
        for name, value in parts.items():
            key = "loss" if name == "loss" else f"loss_{name}"
            self.log_loss(stage, value, batch["image"].shape[0], key, bar=name == "loss")
        if stage != "train":
            self._update_map(batch)
        return parts["loss"]

    def _update_map(self, batch: dict[str, Any]) -> None:
        predictions = self.model.predict(batch["image"])
        targets = [{"boxes": b.detach().cpu().float(), "labels": lab.detach().cpu().long()}
                   for b, lab in zip(batch["boxes"], batch["labels"], strict=True)]  # fmt: skip
        self.metric.update(predictions, targets)

    def _epoch_end(self, stage: str) -> None:
        if not self.metric.targets:  # training steps collect no detections
            return
        result = self.metric.compute()
        self.metric.reset()
        for key in ("map", "map_50", "map_75"):
            value = float(result[key])
            self.log(f"{stage}/{key}", max(value, 0.0), prog_bar=key == "map", rank_zero_only=False)


__all__ = ["DetectionModule"]
