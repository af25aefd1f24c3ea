"""Training modes: which weights of a model (backbone + head) learn, set through the backbone's interface."""

from __future__ import annotations

from typing import Literal

from torch import nn

from dinotune.backbones.lora import LoraConfig

Mode = Literal["finetune", "partial", "lora", "linear", "distill"]
DenseMode = Literal["linear", "finetune", "partial", "lora"]  # segment, depth, detect (no distillation)
BACKBONE_TRAINS: tuple[str, ...] = ("finetune", "partial", "distill")


def prepare_model(
    model: nn.Module,
    mode: Mode,
    *,
    freeze_blocks: int = 0,
    lora: LoraConfig | None = None,
    drop_path_rate: float = 0.0,
    activation_checkpointing: bool = False,
) -> dict[str, int]:
    """Set which parameters of `model.backbone` / `model.head` train for `mode` (in place); returns
    trainable / total parameter counts."""
    backbone = model.backbone
    backbone.set_trainable(mode in BACKBONE_TRAINS)
    model.head.requires_grad_(True)
    if mode == "partial":
        backbone.freeze_first(freeze_blocks)
    elif mode == "lora":
        backbone.apply_lora(lora or LoraConfig())
    if mode != "linear":  # a frozen backbone runs in eval mode: no drop path, nothing to recompute
        backbone.set_drop_path(drop_path_rate)
        if activation_checkpointing:
            backbone.enable_checkpointing()
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}
