"""A DINOv3 ViT with the official method names, running Hugging Face's `DINOv3ViTModel` layers.

We reuse transformers' network (weights, attention kernels, gradient checkpointing) and only own the
forward loop, because the official API needs every block's output and separate norms per token kind.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dinotune.backbones.base import BackboneBase
from dinotune.backbones.info import BackboneInfo


class ViTBackbone(BackboneBase):
    """`forward_features` / `get_intermediate_layers` with the semantics of `dinov3.models.vision_transformer`."""

    def __init__(self, hf_model: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.hf = hf_model
        self.info = info
        config = hf_model.config
        self.embed_dim: int = config.hidden_size
        self.patch_size: int = config.patch_size
        self.n_storage_tokens: int = config.num_register_tokens
        self.n_blocks: int = config.num_hidden_layers
        self.num_heads: int = config.num_attention_heads

    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj")
    supports_masking = True

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.model.layer

    @property
    def units(self) -> nn.ModuleList:
        return self.blocks

    @property
    def embeddings(self) -> nn.Module:
        return self.hf.embeddings

    @property
    def feature_kinds(self) -> tuple[str, ...]:
        return ("cls", "patch_mean", "cls_last4") if self.n_blocks >= 4 else ("cls", "patch_mean")

    def set_trainable(self, trainable: bool) -> None:
        super().set_trainable(trainable)
        self.hf.embeddings.mask_token.requires_grad_(False)  # only masked-image pretraining uses it

    def set_drop_path(self, rate: float) -> None:
        """Uniform stochastic depth on every block, as DINOv3 trains its ViTs."""
        if rate <= 0:
            return
        from transformers.models.dinov3_vit.modeling_dinov3_vit import Dinov3ViTDropPath

        self.hf.config.drop_path_rate = rate
        for block in self.blocks:
            block.drop_path = Dinov3ViTDropPath(rate)

    def enable_checkpointing(self) -> None:
        self.hf.activation_checkpointing_enable()

    @property
    def input_multiple(self) -> int:
        """Input sides must be multiples of this many pixels."""
        return self.patch_size

    def _run(self, x: Tensor, take: set[int], masks: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """Tokens after each block in `take` (un-normed), and after the last block."""
        _, _, height, width = x.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        x = x.to(self.hf.embeddings.patch_embeddings.weight.dtype)
        tokens = self.hf.embeddings(x, bool_masked_pos=masks)
        rope = self.hf.rope_embeddings(x)
        outputs = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, position_embeddings=rope)
            if index in take:
                outputs.append(tokens)
        return outputs, tokens

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Any]:
        _, tokens = self._run(x, set(), masks)
        normed = self.hf.norm(tokens)
        first_patch = self.n_storage_tokens + 1
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_storage_tokens": normed[:, 1:first_patch],
            "x_norm_patchtokens": normed[:, first_patch:],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | list[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        """`n` is a count of last blocks or a list of block indices, as in the official code."""
        take = range(self.n_blocks - n, self.n_blocks) if isinstance(n, int) else n
        outputs, _ = self._run(x, set(take))
        if norm:
            outputs = [self.hf.norm(out) for out in outputs]
        first_patch = self.n_storage_tokens + 1
        class_tokens = [out[:, 0] for out in outputs]
        extra_tokens = [out[:, 1:first_patch] for out in outputs]
        patches = [out[:, first_patch:] for out in outputs]
        if reshape:
            batch, _, height, width = x.shape
            grid = (height // self.patch_size, width // self.patch_size)
            patches = [p.reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        parts = [patches]
        if return_class_token:
            parts.append(class_tokens)
        if return_extra_tokens:
            parts.append(extra_tokens)
        return tuple(patches) if len(parts) == 1 else tuple(zip(*parts, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        """The normalised class token, as the official model's `forward` with an identity head."""
        return self.forward_features(x)["x_norm_clstoken"]
