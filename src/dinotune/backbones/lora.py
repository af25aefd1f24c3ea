"""LoRA adapters (peft) on the attention and MLP linears of a DINOv3 backbone, and merging them away.

`apply_lora` injects adapters in place into `backbone.hf` (module names stay those of the HF model, with
`base_layer` / `lora_A` / `lora_B` underneath the targeted linears), freezes every other backbone
weight and returns the number of adapter parameters. `merge_lora` folds the adapters into the base
weights (W + B A * alpha / r) and puts plain `nn.Linear` modules back, so the saved HF folder, ONNX
export and serving never see peft.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from dinotune.config import StrictModel
from dinotune.errors import ConfigError


class LoraConfig(StrictModel):
    """The `lora:` section: used when `mode: lora`."""

    rank: int = Field(4, ge=1, description="Rank r of each adapter (ViT-S, all linears: r=4 trains ~1.6%).")
    alpha: float = Field(8.0, gt=0, description="Scale alpha; the update is B A * alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    targets: list[str] | None = Field(
        None, description="Linear module names to adapt (None: all attention and MLP linears of the backbone)."
    )


def apply_lora(backbone: nn.Module, cfg: LoraConfig, default_targets: tuple[str, ...]) -> int:
    """Freeze the backbone and add trainable adapters; returns the number of adapter parameters.

    `default_targets` (the family's attention and MLP linears) are used where `cfg.targets` is unset.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    linear_names = {n.rsplit(".", 1)[-1] for n, m in backbone.hf.named_modules() if isinstance(m, nn.Linear)}
    targets = cfg.targets or [n for n in default_targets if n in linear_names]
    unknown = sorted(set(targets) - linear_names)
    if unknown:
        raise ConfigError(
            f"lora.targets {unknown} are not linear layers of this backbone; choose from {sorted(linear_names)}."
        )
    backbone.requires_grad_(False)
    peft_cfg = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(targets), bias="none"
    )
    inject_adapter_in_model(peft_cfg, backbone.hf)
    adapters = [p for n, p in backbone.named_parameters() if "lora_" in n]
    for param in adapters:
        param.requires_grad_(True)
    return sum(p.numel() for p in adapters)


def has_lora(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in module.modules())


def merge_lora(backbone: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore plain modules, in place; returns `backbone`.

    The merged backbone computes the same function as the adapted one (up to float rounding) and has
    exactly the parameter names and shapes of the original HF model.
    """
    from peft.tuners.lora import LoraLayer

    replacements = [(name, module) for name, module in backbone.named_modules() if isinstance(module, LoraLayer)]
    for name, module in replacements:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child, module.get_base_layer())
    return backbone
