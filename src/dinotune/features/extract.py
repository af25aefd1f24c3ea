"""The features frozen-backbone heads use, computed one way for the cache and for deployed models.

Kinds: `cls` (normed class token), `patch_mean` (mean of normed patch tokens) and, for ViTs with at
least 4 blocks, `cls_last4` (normed class tokens of the last 4 blocks, concatenated) - the inputs of
the official dinov3 linear protocol (class token + mean patch token, last 1 or 4 blocks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dinotune.backbones import Backbone
from dinotune.device import autocast


def feature_kinds(backbone: Backbone) -> tuple[str, ...]:
    return backbone.feature_kinds


def compute_features(backbone: Backbone, images: Tensor, kinds: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Differentiable: used inside deployed models (and so by ONNX export) as well as for caching."""
    kinds = tuple(kinds or feature_kinds(backbone))
    unknown = set(kinds) - set(feature_kinds(backbone))
    if unknown:
        raise ValueError(f"feature kinds {sorted(unknown)} are not available for this backbone")
    if "cls_last4" in kinds:
        layers = backbone.get_intermediate_layers(images, n=4, return_class_token=True, norm=True)
        patches, cls = layers[-1]
        out = {"cls": cls, "patch_mean": patches.mean(dim=1), "cls_last4": torch.cat([c for _, c in layers], dim=-1)}
    else:
        features = backbone.forward_features(images)
        out = {"cls": features["x_norm_clstoken"], "patch_mean": features["x_norm_patchtokens"].mean(dim=1)}
    return {k: out[k] for k in kinds}


@torch.inference_mode()
def extract_features(
    backbone: Backbone, images: Tensor, kinds: Sequence[str] | None = None, channels_last: bool = False
) -> dict[str, Tensor]:
    """Every kind in one forward pass, as fp32 on the CPU (bf16 autocast on CUDA): the eager reference
    every other engine is checked against (see `dinotune.features.engine`)."""
    device = next(backbone.parameters()).device
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(device):
        out = compute_features(backbone, images, kinds)
    return {k: v.float().cpu() for k, v in out.items()}
