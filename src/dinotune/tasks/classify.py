"""Supervised fine-tuning of a `Classifier` (backbone + linear head), on the shared `TaskModule` base.

The network stays the plain-PyTorch `dinotune.model.Classifier` that export and serving load; this
module only adds what classification needs: the loss (label smoothing, mixup/cutmix, distillation),
an EMA copy, the resolution schedule and the accuracy / mAP metric.

Exact resume: all randomness inside a training step (mixup, drop path, dropout) comes from a seed
derived from (seed, epoch, batch, rank), and the EMA copy is a submodule, so a checkpoint restores
everything a step depends on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from dinotune.config import StrictModel
from dinotune.errors import ConfigError
from dinotune.losses.distill import DistillConfig, distillation_loss
from dinotune.model import Classifier
from dinotune.training.base import TaskModule
from dinotune.training.modes import Mode
from dinotune.training.optim import OptimConfig


class RegularizationConfig(StrictModel):
    """The `regularization:` section."""

    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Single-label cross-entropy smoothing.")
    mixup_alpha: float = Field(0.0, ge=0, description="Beta(alpha, alpha) mixup (0: off; 0.8 is common).")
    cutmix_alpha: float = Field(0.0, ge=0, description="Beta(alpha, alpha) CutMix (0: off; 1.0 is common).")
    mix_prob: float = Field(1.0, ge=0, le=1, description="Share of batches mixed when mixup/cutmix is on.")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="Stochastic depth (config.drop_path_rate).")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="EMA of weights (e.g. 0.999); evaluated and exported instead of the raw weights. None: off.",
    )


# --------------------------------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------------------------------


def mix_batch(
    images: Tensor, targets: Tensor, cfg: RegularizationConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Mixup or CutMix (chosen 50/50 when both are on) with soft targets; `targets` are (N, C) floats."""
    use_mixup, use_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    if not (use_mixup or use_cutmix) or torch.rand((), generator=gen) >= cfg.mix_prob:
        return images, targets
    cutmix = use_cutmix and (not use_mixup or bool(torch.rand((), generator=gen) < 0.5))
    alpha = cfg.cutmix_alpha if cutmix else cfg.mixup_alpha
    lam = float(torch._sample_dirichlet(torch.tensor([alpha, alpha]), generator=gen)[0])  # Beta(alpha, alpha)
    perm = torch.randperm(images.shape[0], generator=gen).to(images.device)
    if cutmix:
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, (), generator=gen)), int(torch.randint(w, (), generator=gen))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        images = images * lam + images[perm] * (1 - lam)
    return images, targets * lam + targets[perm] * (1 - lam)


def size_at(schedule: Mapping[int, int] | None, epoch: int) -> int | None:
    """The training image side at `epoch` for a schedule {first_epoch: size}; None without a schedule."""
    if not schedule:
        return None
    return schedule[max((e for e in schedule if e <= epoch), default=min(schedule))]


# --------------------------------------------------------------------------------------------------
# The Lightning module
# --------------------------------------------------------------------------------------------------


class ClassificationModule(TaskModule):
    """Trains `model` (a `Classifier`, prepared with `prepare_model`) for `num_classes` classes."""

    def __init__(
        self,
        model: Classifier,
        num_classes: int,
        *,
        mode: Mode = "finetune",
        optim: OptimConfig | None = None,
        regularization: RegularizationConfig | None = None,
        class_weights: Tensor | None = None,
        resolution_schedule: Mapping[int, int] | None = None,
        teacher: Classifier | None = None,
        teacher_norm: tuple[Tensor, Tensor] | None = None,
        distill: DistillConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, mode=mode, optim=optim, seed=seed)
        import torchmetrics

        self.num_classes = num_classes
        self.reg = regularization or RegularizationConfig()
        self.multilabel = model.head.multilabel
        self.register_buffer("class_weights", class_weights.float() if class_weights is not None else None)
        self.resolution_schedule = dict(resolution_schedule or {})
        self.ema = copy.deepcopy(model).requires_grad_(False).eval() if self.reg.ema_decay else None
        if mode == "distill" and teacher is None:
            raise ConfigError("mode=distill needs a teacher: set distill.teacher to a trained run folder.")
        self.distill_cfg = distill or DistillConfig()
        # not a submodule: the teacher is fixed and stays out of checkpoints and optimizer groups
        self._teacher = [teacher.requires_grad_(False).eval()] if teacher is not None else []
        self._teacher_norm = teacher_norm
        self.monitor = "val/map" if self.multilabel else "val/accuracy"

        def metric() -> torchmetrics.Metric:
            if self.multilabel:
                return torchmetrics.classification.MultilabelAveragePrecision(num_labels=num_classes)
            return torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, average="micro")

        self.metrics = nn.ModuleDict({f"{stage}_metric": metric() for stage in ("train", "val", "test")})

    # ----- network ---------------------------------------------------------------------------------------
    def deployable(self) -> Classifier:
        """The network to evaluate and export: the EMA copy when enabled."""
        return self.ema if self.ema is not None else self.model  # type: ignore[return-value]

    def on_fit_start(self) -> None:
        for teacher in self._teacher:
            teacher.to(self.device)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.ema is not None and self.ema.training:
            self.ema.eval()

    # ----- steps -----------------------------------------------------------------------------------------
    def _targets(self, labels: Tensor) -> Tensor:
        return labels.float() if self.multilabel else F.one_hot(labels.long(), self.num_classes).float()

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.class_weights)
        return F.cross_entropy(
            logits.float(), targets, weight=self.class_weights, label_smoothing=self.reg.label_smoothing
        )

    def _teacher_logits(self, images: Tensor) -> Tensor:
        teacher = self._teacher[0]
        if self._teacher_norm is not None:
            scale, shift = (t.to(images) for t in self._teacher_norm)
            images = images * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        multiple = teacher.backbone.input_multiple
        if images.shape[-1] % multiple or images.shape[-2] % multiple:
            size = [max(multiple, round(s / multiple) * multiple) for s in images.shape[-2:]]
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            return teacher(images)

    def _shared_step(self, batch: dict[str, Any], stage: str, batch_idx: int) -> Tensor:
        images, labels = batch["image"], batch["label"]
        targets: Tensor = labels
        model = self.model
        if stage == "train":
            gen = self.step_generator(batch_idx)
            size = size_at(self.resolution_schedule, self.current_epoch)
            if size is not None and tuple(images.shape[-2:]) != (size, size):
                images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            if self.reg.mixup_alpha > 0 or self.reg.cutmix_alpha > 0:
                images, targets = mix_batch(images, self._targets(labels), self.reg, gen)
        elif self.ema is not None:
            model = self.ema
        logits = model(images)
        loss = self._loss(logits, targets)
        if stage == "train" and self.mode == "distill":
            self.log("train/loss_hard", loss.detach(), on_step=True, on_epoch=False)
            loss = distillation_loss(
                logits,
                self._teacher_logits(images),
                loss,
                self.distill_cfg.alpha,
                self.distill_cfg.temperature,
                self.multilabel,
            )
        preds = torch.sigmoid(logits) if self.multilabel else logits
        self.metrics[f"{stage}_metric"].update(preds.detach().float(), labels.long())
        key = "map" if self.multilabel else "accuracy"
        self.log_loss(stage, loss, images.shape[0])
        self.log(
            f"{stage}/{key}",
            self.metrics[f"{stage}_metric"],
            on_step=False,
            on_epoch=True,
            prog_bar=stage != "train",
            batch_size=images.shape[0],
        )
        return loss

    # ----- optimisation ----------------------------------------------------------------------------------
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.ema is not None:
            self.update_ema(self.reg.ema_decay or 0.0)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        head = next((v for k, v in lrs.items() if k.startswith("head")), None)
        if head is not None:
            self.log("train/lr_head", head, on_step=True, on_epoch=False)

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * model (parameters); buffers are copied."""
        assert self.ema is not None
        ema_params = [p for p in self.ema.parameters()]
        params = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buf, buf in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            ema_buf.copy_(buf)


__all__ = ["ClassificationModule", "RegularizationConfig", "mix_batch", "size_at"]
