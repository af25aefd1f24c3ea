"""Self-supervised continued pretraining (DINOv3 recipe) as a Lightning module.

A student (backbone + fresh DINO/iBOT heads) learns to match an EMA teacher across multi-crop views:
DINO loss on class tokens, iBOT loss on masked patches, KoLeo on the student's class tokens and,
optionally, Gram anchoring of the student's patch similarities to a frozen copy of the starting
backbone. Every schedule is a pure function of the optimizer step; the teacher, the loss centres and
the Gram reference are submodules/buffers, so Lightning checkpoints hold everything for exact resume.

Step order (automatic optimization): `training_step` (losses) -> backward -> `on_before_optimizer_step`
(freeze prototypes / backbone by dropping their gradients) -> clipping -> `optimizer_step` (scheduled
LR and weight decay, AdamW step, then the EMA update of the teacher).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import lightning as L
import torch
from pydantic import Field
from torch import Tensor, nn

from dinotune.backbones import Backbone
from dinotune.config import StrictModel
from dinotune.heads.ssl import DINOHead
from dinotune.losses import DINOLoss, IBOTPatchLoss, gram_loss, koleo_loss, teacher_temperature
from dinotune.training.optim import param_groups
from dinotune.training.schedules import cosine, warmup_cosine


class HeadsConfig(StrictModel):
    out_dim: int = Field(65536, ge=2, description="Prototypes of the DINO head (CPU runs: 1024-4096).")
    hidden_dim: int = Field(2048, ge=1, description="Width of the head MLP.")
    bottleneck_dim: int = Field(256, ge=1, description="Dimension the prototypes live in.")
    n_layers: int = Field(3, ge=1, description="Linear layers of the head MLP.")
    ibot_separate_head: bool = Field(True, description="iBOT gets its own head (False: share the DINO head).")
    ibot_out_dim: int | None = Field(None, ge=2, description="Prototypes of a separate iBOT head (None: out_dim).")


class SSLLossConfig(StrictModel):
    dino_weight: float = Field(1.0, ge=0)
    ibot_weight: float = Field(1.0, ge=0, description="0 disables masking and the iBOT head.")
    koleo_weight: float = Field(0.1, ge=0)
    gram_weight: float = Field(0.0, ge=0, description=">0 anchors patch similarities to the starting backbone.")
    gram_remove_negatives: bool = False
    centering: Literal["sinkhorn", "center"] = "sinkhorn"
    sinkhorn_iterations: int = Field(3, ge=1)
    center_momentum: float = Field(0.9, ge=0, lt=1)
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.07, gt=0)
    teacher_temp_start: float = Field(0.04, gt=0, description="Teacher temperature at step 0 (warm-up start).")
    teacher_temp_warmup: float = Field(0.3, ge=0, le=1, description="Warm-up length, as a fraction of training.")
    mask_ratio: tuple[float, float] = Field((0.1, 0.5), description="iBOT mask ratio range per global crop.")
    mask_probability: float = Field(0.5, ge=0, le=1, description="Share of global crops that are masked.")


class SSLOptimConfig(StrictModel):
    lr: float = Field(1e-4, gt=0, description="Peak AdamW learning rate (after warm-up).")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="Floor of the cosine, relative to the peak.")
    warmup: float = Field(0.1, ge=0, le=1, description="LR warm-up, as a fraction of training.")
    weight_decay: float = Field(0.04, ge=0, description="Weight decay at step 0 ...")
    weight_decay_end: float = Field(0.2, ge=0, description="... cosine-increased to this at the end.")
    layer_decay: float = Field(0.9, gt=0, le=1, description="Layer-wise LR decay (1: off).")
    betas: tuple[float, float] = (0.9, 0.999)
    head_warmup: float = Field(0.05, ge=0, le=1, description="Heads-only training first (fraction); backbone frozen.")
    freeze_last_layer_epochs: float = Field(1.0, ge=0, description="Prototypes frozen for this many epochs.")
    momentum_start: float = Field(0.994, ge=0, le=1, description="Teacher EMA momentum at step 0 ...")
    momentum_end: float = Field(1.0, ge=0, le=1, description="... cosine-increased to this at the end.")


def frozen_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    copied.requires_grad_(False)
    return copied.eval()


class SSLModule(L.LightningModule):
    """Student + EMA teacher (+ frozen Gram reference) with DINO / iBOT / KoLeo / Gram losses."""

    def __init__(self, backbone: Backbone, heads: HeadsConfig, loss: SSLLossConfig, optim: SSLOptimConfig) -> None:
        super().__init__()
        self.heads_cfg, self.loss_cfg, self.optim_cfg = heads, loss, optim
        self.use_ibot = loss.ibot_weight > 0
        dim = backbone.embed_dim
        student: dict[str, nn.Module] = {"backbone": backbone, "dino_head": self._head(dim, heads.out_dim)}
        ibot_dim = heads.out_dim
        if self.use_ibot and heads.ibot_separate_head:
            ibot_dim = heads.ibot_out_dim or heads.out_dim
            student["ibot_head"] = self._head(dim, ibot_dim)
        self.student = nn.ModuleDict(student)
        self.teacher = frozen_copy(self.student)
        self.reference = frozen_copy(backbone) if loss.gram_weight > 0 else None
        kw = {
            "student_temp": loss.student_temp,
            "center_momentum": loss.center_momentum,
            "centering": loss.centering,
            "sinkhorn_iterations": loss.sinkhorn_iterations,
        }
        self.dino_loss = DINOLoss(heads.out_dim, **kw)
        self.ibot_loss = IBOTPatchLoss(ibot_dim, **kw) if self.use_ibot else None
        self.total_steps, self.steps_per_epoch = 1, 1

    def _head(self, dim: int, out_dim: int) -> DINOHead:
        h = self.heads_cfg
        return DINOHead(dim, out_dim, h.hidden_dim, h.bottleneck_dim, h.n_layers)

    def _ibot_head(self, model: nn.ModuleDict) -> nn.Module:
        return model["ibot_head"] if "ibot_head" in model else model["dino_head"]

    # ----- schedules -------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        trainer = self.trainer
        self.total_steps = max(1, int(trainer.estimated_stepping_batches))
        batches = trainer.num_training_batches
        if batches != float("inf"):
            self.steps_per_epoch = max(1, -(-int(batches) // trainer.accumulate_grad_batches))

    def _steps(self, fraction: float) -> int:
        return round(fraction * self.total_steps)

    def on_train_epoch_start(self) -> None:
        self.teacher.eval()
        if self.reference is not None:
            self.reference.eval()

    # ----- forward / losses ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        cfg, step = self.loss_cfg, self.global_step
        glob = batch["global"].transpose(0, 1).flatten(0, 1)  # (2B, C, G, G), crop-major
        n_images = batch["global"].shape[0]
        masks = batch["masks"].transpose(0, 1).flatten(0, 1) if self.use_ibot else None  # (2B, N)
        temp = teacher_temperature(step, self._steps(cfg.teacher_temp_warmup), cfg.teacher_temp_start, cfg.teacher_temp)
        with torch.no_grad():
            t_out = self.teacher["backbone"].forward_features(glob)
            t_logits = self.teacher["dino_head"](t_out["x_norm_clstoken"])
            t_probs = self.dino_loss.teacher_probs(t_logits.view(2, n_images, -1), temp)
        s_out = self.student["backbone"].forward_features(glob, masks=masks)
        s_cls = s_out["x_norm_clstoken"]
        s_logits = [self.student["dino_head"](s_cls).view(2, n_images, -1)]
        local = batch["local"]
        if local.shape[1]:
            local_cls = self.student["backbone"].forward_features(local.transpose(0, 1).flatten(0, 1))
            local_logits = self.student["dino_head"](local_cls["x_norm_clstoken"])
            s_logits.append(local_logits.view(-1, n_images, local_logits.shape[-1]))
        terms = {"dino": self.dino_loss(torch.cat(s_logits), t_probs, ignore_diagonal=True)}
        if cfg.centering == "center":
            self.dino_loss.update_center(t_logits)
        if self.use_ibot and masks is not None and self.ibot_loss is not None:
            terms["ibot"] = self._ibot(t_out["x_norm_patchtokens"], s_out["x_norm_patchtokens"], masks, temp)
        if cfg.koleo_weight > 0:
            terms["koleo"] = sum(koleo_loss(part) for part in s_cls.chunk(2)) / 2
        if self.reference is not None:
            with torch.no_grad():
                ref = self.reference.forward_features(glob)["x_norm_patchtokens"]
            terms["gram"] = gram_loss(s_out["x_norm_patchtokens"], ref, cfg.gram_remove_negatives)
        weights = {"dino": cfg.dino_weight, "ibot": cfg.ibot_weight, "koleo": cfg.koleo_weight, "gram": cfg.gram_weight}
        total = sum(weights[name] * value for name, value in terms.items())
        self._log_step(terms, total, s_logits[0], t_logits.view(2, n_images, -1), temp)
        return total

    def _ibot(self, teacher_patches: Tensor, student_patches: Tensor, masks: Tensor, temp: float) -> Tensor:
        assert self.ibot_loss is not None
        with torch.no_grad():
            t_logits = self._ibot_head(self.teacher)(teacher_patches[masks])
            t_probs = self.ibot_loss.teacher_probs(t_logits, temp)
            if self.loss_cfg.centering == "center":
                self.ibot_loss.update_center(t_logits)
        s_logits = self._ibot_head(self.student)(student_patches[masks])
        return self.ibot_loss.masked_loss(s_logits, t_probs, masks)

    def _log_step(
        self, terms: dict[str, Tensor], total: Tensor, s_logits: Tensor, t_logits: Tensor, temp: float
    ) -> None:
        with torch.no_grad():
            s_top, t_top = s_logits.argmax(-1), t_logits.argmax(-1)  # (2, B)
            agreement = (s_top == t_top.flip(0)).float().mean()  # student view i vs teacher view j != i
            used = t_top.unique().numel() / self.heads_cfg.out_dim
        logged = {f"loss/{k}": v.detach() for k, v in terms.items()}
        logged |= {
            "loss/total": total.detach(),
            "monitor/agreement": agreement,
            "monitor/teacher_prototypes_used": torch.tensor(used),
            "schedule/teacher_temp": torch.tensor(temp),
        }
        logged |= {f"schedule/{k}": torch.tensor(v) for k, v in self.scheduled(self.global_step).items()}
        self.log_dict(logged, on_step=True, on_epoch=False, prog_bar=False, batch_size=s_logits.shape[1])
        self.log("loss", total.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)

    # ----- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        backbone = self.student["backbone"]
        heads = [(name, module) for name, module in self.student.items() if name != "backbone"]
        # With unit rates, each group's lr / weight_decay are the layer-decay and no-decay scales that
        # optimizer_step multiplies by the scheduled values.
        groups = param_groups(
            backbone,
            [module for _, module in heads],
            lr=1.0,
            head_lr=1.0,
            layer_decay=self.optim_cfg.layer_decay,
            weight_decay=1.0,
        )
        params = [{"params": g["params"], "lr_scale": g["lr"], "wd_scale": g["weight_decay"]} for g in groups]
        return torch.optim.AdamW(params, lr=self.optim_cfg.lr, betas=self.optim_cfg.betas)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Frozen parts get no gradient (AdamW then skips them entirely, weight decay included)."""
        step, cfg = self.global_step, self.optim_cfg
        frozen: list[nn.Parameter] = []
        if step < round(cfg.freeze_last_layer_epochs * self.steps_per_epoch):
            for name, head in self.student.items():
                if name != "backbone":
                    frozen += head.last_layer_parameters()
        if step < self._steps(cfg.head_warmup):
            frozen += list(self.student["backbone"].parameters())
        for param in frozen:
            param.grad = None

    def scheduled(self, step: int) -> dict[str, float]:
        """LR, weight decay and teacher momentum at optimizer step `step`."""
        cfg, total = self.optim_cfg, self.total_steps
        return {
            "lr": warmup_cosine(step, total, self._steps(cfg.warmup), cfg.lr, cfg.lr * cfg.min_lr_ratio),
            "weight_decay": cosine(step, total, cfg.weight_decay, cfg.weight_decay_end),
            "momentum": cosine(step, total, cfg.momentum_start, cfg.momentum_end),
        }

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        values = self.scheduled(self.global_step)
        for group in optimizer.param_groups:
            group["lr"] = values["lr"] * group["lr_scale"]
            group["weight_decay"] = values["weight_decay"] * group["wd_scale"]
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.update_teacher(values["momentum"])

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, parameter by parameter."""
        teacher = list(self.teacher.parameters())
        student = [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1 - momentum)

    def exported_backbone(self) -> Backbone:
        """The backbone to release: the EMA teacher's, as in DINO."""
        return self.teacher["backbone"]  # type: ignore[return-value]


def check_backbone(backbone: Backbone, loss: SSLLossConfig) -> None:
    """iBOT needs a mask token, which only the ViTs have."""
    from dinotune.errors import ConfigError

    if loss.ibot_weight > 0 and not backbone.supports_masking:
        raise ConfigError("loss.ibot_weight > 0 needs a ViT backbone (ConvNeXt has no mask token); set it to 0.")
