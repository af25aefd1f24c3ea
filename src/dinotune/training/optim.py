"""AdamW parameter groups and learning-rate schedules for fine-tuning any DINOv3 backbone.

Layer-wise LR decay (BEiT, and timm's `param_groups_layer_decay`): with L blocks (ViT) or stages
(ConvNeXt), the embeddings have depth 0, block/stage i depth i + 1, and what follows the last block
(final norm) depth L + 1. A parameter at depth d gets `lr * layer_decay ** (L + 1 - d)`, so the early,
generic layers move least. The head is not part of the backbone and gets its own `head_lr`
("differential LR": e.g. backbone 1e-5, head 1e-3).

No weight decay on biases, norm weights, layer scales and learned tokens (class, register, mask):
decaying them towards zero changes what the layer computes instead of regularising it.

Schedules are functions of the optimizer step returning a multiplier of the base LR, for
`torch.optim.lr_scheduler.LambdaLR`; LambdaLR's state is saved in Lightning checkpoints, so a resumed
run continues the same curve.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import Field
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from dinotune.backbones.base import BackboneBase
from dinotune.config import StrictModel
from dinotune.errors import ConfigError
from dinotune.training.schedules import Schedule, constant, cosine_restarts, cosine_schedule, step_decay

_NO_DECAY_SUFFIXES = ("cls_token", "mask_token", "register_tokens", "lambda1", "gamma")


class OptimConfig(StrictModel):
    """The `optim:` section of a fine-tuning config."""

    lr: float = Field(2e-5, gt=0, description="Peak LR of the last backbone block (earlier ones decay).")
    head_lr: float = Field(1e-3, gt=0, description="Peak LR of the classification head.")
    layer_decay: float = Field(0.9, gt=0, le=1, description="Layer-wise LR decay per block (1: off).")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (never on norms, biases, tokens).")
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["cosine", "cosine_restarts", "step", "constant"] = Field(
        "cosine", description="cosine: warm-up then cosine; cosine_restarts: SGDR; step: x gamma every step_size."
    )
    warmup: float = Field(0.05, ge=0, lt=1, description="Linear warm-up, as a fraction of all optimizer steps.")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="Floor of the cosine, relative to the peak.")
    restart_period: float = Field(0.25, gt=0, le=1, description="cosine_restarts: first cycle, fraction of steps.")
    restart_mult: float = Field(1.0, ge=1, description="cosine_restarts: each cycle is this much longer.")
    step_size: float = Field(0.33, gt=0, le=1, description="step: decay every this fraction of steps.")
    step_gamma: float = Field(0.1, gt=0, le=1, description="step: multiply the LR by this at each decay.")


def skip_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm weights (1-D), layer scales and learned tokens; LoRA adapters are decayed like weights."""
    return param.ndim <= 1 or name.endswith(_NO_DECAY_SUFFIXES)


def param_groups(
    backbone: BackboneBase,
    heads: Iterable[nn.Module],
    *,
    lr: float,
    head_lr: float,
    layer_decay: float,
    weight_decay: float,
) -> list[dict]:
    """AdamW groups for the trainable parameters, one per (part, depth, decayed) with its own `lr`.

    Each group also carries `name` and `param_names` (for logs and tests); frozen parameters are left
    out, so AdamW never touches them (not even through weight decay).
    """
    groups: dict[tuple[str, int, bool], dict] = {}
    n_layers, depths = backbone.n_blocks, backbone.layer_ids()

    def add(part: str, name: str, param: nn.Parameter, depth: int, group_lr: float) -> None:
        no_wd = skip_weight_decay(name, param)
        key = (part, depth, no_wd)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": group_lr,
                "initial_lr": group_lr,
                "weight_decay": 0.0 if no_wd else weight_decay,
                "name": f"{part}/depth{depth}/{'no_wd' if no_wd else 'wd'}",
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)

    for name, param in backbone.named_parameters():
        if param.requires_grad:
            depth = depths[name]
            add("backbone", name, param, depth, lr * layer_decay ** (n_layers + 1 - depth))
    for index, head in enumerate(heads):
        for name, param in head.named_parameters():
            if param.requires_grad:
                add(f"head{index}", name, param, n_layers + 1, head_lr)
    if not groups:
        raise ConfigError("Nothing to train: every parameter is frozen (check `mode` and `freeze_blocks`).")
    return [groups[k] for k in sorted(groups)]


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> AdamW:
    """AdamW over `param_groups(...)`; `param_names` stays in the groups (ignored by AdamW)."""
    return AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def schedule_from_config(cfg: OptimConfig, total_steps: int) -> Schedule:
    """The configured schedule for a run of `total_steps` optimizer steps (fractions become steps)."""
    warmup = round(cfg.warmup * total_steps)
    if cfg.scheduler == "cosine":
        return cosine_schedule(total_steps, warmup, cfg.min_lr_ratio)
    if cfg.scheduler == "cosine_restarts":
        return cosine_restarts(
            max(1, round(cfg.restart_period * total_steps)), cfg.restart_mult, warmup, cfg.min_lr_ratio
        )
    if cfg.scheduler == "step":
        return step_decay(round(cfg.step_size * total_steps), cfg.step_gamma, warmup)
    return constant(warmup)


def build_scheduler(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """LambdaLR applying the same multiplier to every group's own peak LR."""
    return LambdaLR(optimizer, schedule_from_config(cfg, total_steps))
