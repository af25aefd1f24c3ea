"""A DINOv3 ConvNeXt with the official method names, running Hugging Face's `DINOv3ConvNextModel` stages."""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dinotune.backbones.base import BackboneBase
from dinotune.backbones.info import BackboneInfo


class ConvNeXtBackbone(BackboneBase):
    """Semantics of `dinov3.models.convnext.ConvNeXt`: the class token is the global average of the last
    feature map, normalised together with the patches; only the last stage has a norm."""

    def __init__(self, hf_model: nn.Module, info: BackboneInfo, patch_size: int | None = None) -> None:
        super().__init__()
        self.hf = hf_model
        self.info = info
        config = hf_model.config
        self.embed_dims: list[int] = list(config.hidden_sizes)
        self.embed_dim: int = self.embed_dims[-1]
        self.n_storage_tokens = 0
        self.n_blocks = len(self.embed_dims)
        # None as in the official code: intermediate maps keep their native resolution.
        self.patch_size = patch_size

    lora_targets = ("pointwise_conv1", "pointwise_conv2")

    @property
    def stages(self) -> nn.ModuleList:
        return self.hf.model.stages

    @property
    def units(self) -> nn.ModuleList:
        return self.stages

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth growing linearly with depth, as ConvNeXt trains."""
        if rate <= 0:
            return
        from transformers.models.dinov3_convnext.modeling_dinov3_convnext import Dinov3ConvnextDropPath

        self.hf.config.drop_path_rate = rate
        layers = [layer for stage in self.stages for layer in stage.layers]
        for index, layer in enumerate(layers):
            layer.drop_path = Dinov3ConvnextDropPath(rate * index / max(1, len(layers) - 1))

    def enable_checkpointing(self) -> None:
        for stage in self.stages:
            # a bound method as instance attribute: names and state_dict unchanged, and deepcopy (EMA) rebinds it
            stage.forward = types.MethodType(_checkpointed_forward, stage)

    @property
    def input_multiple(self) -> int:
        return 32

    def _norm_for(self, stage: int) -> nn.Module:
        return self.hf.layer_norm if stage == self.n_blocks - 1 else nn.Identity()

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Any]:
        x = x.to(self.hf.layer_norm.weight.dtype)
        for stage in self.stages:
            x = stage(x)
        pooled = x.mean(dim=(-2, -1))
        flat = x.flatten(2).transpose(1, 2)
        normed = self.hf.layer_norm(torch.cat([pooled.unsqueeze(1), flat], dim=1))
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_storage_tokens": normed[:, 1:1],
            "x_norm_patchtokens": normed[:, 1:],
            "x_prenorm": flat,
            "masks": masks,
        }

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | list[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        height, width = x.shape[-2:]
        take = list(range(self.n_blocks - n, self.n_blocks)) if isinstance(n, int) else list(n)
        x = x.to(self.hf.layer_norm.weight.dtype)
        outputs = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in take:
                maps = x
                if self.patch_size is not None:
                    size = (height // self.patch_size, width // self.patch_size)
                    maps = F.interpolate(x, size=size, mode="bilinear", antialias=True)
                outputs.append((index, x.mean(dim=(-2, -1)), maps))
        results = []
        for index, cls, maps in outputs:
            if norm:
                layer_norm = self._norm_for(index)
                cls = layer_norm(cls)
                patches = layer_norm(maps.flatten(2).transpose(1, 2))
                if reshape:
                    patches = patches.transpose(1, 2).reshape(maps.shape).contiguous()
            else:
                patches = maps if reshape else maps.flatten(2).transpose(1, 2)
            results.append((patches, cls))
        if return_class_token:
            return tuple(results)
        return tuple(patches for patches, _ in results)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)["x_norm_clstoken"]


def _checkpointed_forward(stage: nn.Module, x: Tensor) -> Tensor:
    plain = functools.partial(type(stage).forward, stage)
    return checkpoint(plain, x, use_reentrant=False) if stage.training and torch.is_grad_enabled() else plain(x)
