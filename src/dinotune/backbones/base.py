"""What every backbone family offers beyond its forward pass: the adaptations training asks for.

Training code (modes, layer decay, FSDP, LoRA, saving) talks to this interface only, so nothing outside
`dinotune.backbones` reaches into the Hugging Face module tree or asks which family a backbone is.
A family says where its blocks and embeddings are (`units`, `embeddings`) and how drop path and
activation checkpointing are switched on; the rest is derived here.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dinotune.backbones.convert import hf_config_to_arch, hf_to_official
from dinotune.backbones.info import BackboneInfo
from dinotune.backbones.lora import LoraConfig, apply_lora, has_lora, merge_lora
from dinotune.errors import ConfigError


class BackboneBase(nn.Module):
    """Base of `ViTBackbone` and `ConvNeXtBackbone`; `hf` is the wrapped Hugging Face model."""

    hf: nn.Module
    info: BackboneInfo
    n_blocks: int
    embed_dim: int
    #: names of the linear layers LoRA adapts by default
    lora_targets: tuple[str, ...] = ()
    #: whether the forward pass accepts iBOT masks (a mask token)
    supports_masking: bool = False

    @property
    def units(self) -> nn.ModuleList:
        """The blocks (ViT) or stages (ConvNeXt), in order: the units of freezing and layer decay."""
        raise NotImplementedError

    @property
    def embeddings(self) -> nn.Module | None:
        """What runs before the first unit and has parameters (None when the first unit holds it)."""
        return None

    @property
    def feature_kinds(self) -> tuple[str, ...]:
        """Pooled features this backbone can give (see `dinotune.features.extract`)."""
        return ("cls", "patch_mean")

    @property
    def feature_widths(self) -> dict[str, int]:
        """Width of each pooled feature kind."""
        widths = {"cls": self.embed_dim, "patch_mean": self.embed_dim, "cls_last4": 4 * self.embed_dim}
        return {k: widths[k] for k in self.feature_kinds}

    def set_trainable(self, trainable: bool) -> None:
        """Train every weight or none; weights the forward pass of supervised training never uses stay frozen
        (DDP refuses parameters that get no gradient)."""
        self.requires_grad_(trainable)

    def freeze_first(self, n_units: int) -> None:
        """Freeze the embeddings and the first `n_units` blocks/stages."""
        if not 0 <= n_units <= self.n_blocks:
            raise ConfigError(f"freeze_blocks={n_units} must be between 0 and the backbone's {self.n_blocks}.")
        if self.embeddings is not None:
            self.embeddings.requires_grad_(False)
        for unit in list(self.units)[:n_units]:
            unit.requires_grad_(False)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth on every residual branch."""
        raise NotImplementedError

    def enable_checkpointing(self) -> None:
        """Recompute block activations in backward (less memory, ~30% more compute)."""
        raise NotImplementedError

    def layer_ids(self) -> dict[str, int]:
        """Depth of every parameter for layer-wise LR decay: embeddings 0, unit i -> i + 1, the rest n + 1.

        Keys are the names of `self.named_parameters()`; the module tree is walked once.
        """
        names = {id(m): n for n, m in self.named_modules()}
        prefixes = [(names[id(unit)] + ".", index + 1) for index, unit in enumerate(self.units)]
        if self.embeddings is not None:
            prefixes.insert(0, (names[id(self.embeddings)] + ".", 0))
        return {
            name: next((depth for prefix, depth in prefixes if name.startswith(prefix)), self.n_blocks + 1)
            for name, _ in self.named_parameters()
        }

    def layer_id(self, param_name: str) -> int:
        """The depth of one parameter (see `layer_ids`)."""
        return self.layer_ids()[param_name]

    def fsdp_units(self) -> set[type[nn.Module]]:
        """Module types FSDP wraps one by one (a block or stage each)."""
        return {type(unit) for unit in self.units}

    def apply_lora(self, cfg: LoraConfig) -> int:
        """Freeze the backbone and add trainable LoRA adapters; returns the adapter parameter count."""
        return apply_lora(self, cfg, self.lora_targets)

    def strip_training(self) -> None:
        """Fold LoRA adapters into the weights and switch drop path off: what a saved model holds."""
        if has_lora(self):
            merge_lora(self)
        self.hf.config.drop_path_rate = 0.0

    def official_state_dict(self) -> dict:
        """The weights under the official DINOv3 key names (what `torch.save` writes as a `.pth`)."""
        state = {k: v.detach().cpu().clone() for k, v in self.hf.state_dict().items()}
        return hf_to_official(state, hf_config_to_arch(self.hf.config))

    def save_pretrained(self, folder: str | Path) -> None:
        """The weights as a Hugging Face folder (loadable by `load_backbone` and by transformers)."""
        self.hf.save_pretrained(str(folder))
