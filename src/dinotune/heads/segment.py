"""Segmentation heads over backbone feature maps.

- `LinearSegHead`: the DINOv2/v3 linear protocol: BatchNorm + 1x1 conv on the last layer's (or the
  last 4 layers' concatenated) patch tokens; the logits at patch resolution are upsampled bilinearly
  to the image by `Segmenter`. It measures how linearly separable the frozen features are.
- `MultiScaleDecoder`: a light DPT/FPN-style decoder on 4 intermediate layers. ViT maps all share the
  patch grid, so they are first resampled to strides 4, 8, 16, 32 (as DPT's "reassemble"); ConvNeXt
  stages already have those strides. A top-down FPN then fuses them and a 1x1 conv classifies at the
  finest level, which recovers boundaries the 1/16 linear head cannot.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from dinotune.config import StrictModel
from dinotune.heads.mask2former import Mask2FormerConfig, four_even_intervals


class HeadConfig(StrictModel):
    """The `head:` section of a segmentation config."""

    type: Literal["linear", "decoder", "m2f"] = Field(
        "linear", description="linear (BN + 1x1 conv), decoder (FPN) or m2f (Mask2Former, official DINOv3 layout)."
    )
    layers: Literal["last", "last4"] = Field(
        "last4",
        description="linear: last block, or the last 4 "
        "concatenated (official 'ms' setting). The decoder always uses "
        "4 evenly spaced blocks.",
    )
    width: int = Field(128, ge=8, description="decoder: channels of every FPN level.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the head input (0: off).")
    m2f: Mask2FormerConfig = Field(default_factory=Mask2FormerConfig, description="m2f: sizes, weights, classes.")


def layer_indices(n_blocks: int, cfg: HeadConfig) -> list[int]:
    """Block (ViT) or stage (ConvNeXt) indices the head reads."""
    if cfg.type == "linear":
        return [n_blocks - 1] if cfg.layers == "last" else list(range(max(0, n_blocks - 4), n_blocks))
    if cfg.type == "m2f":
        return four_even_intervals(n_blocks)
    if n_blocks <= 4:
        return list(range(n_blocks))
    return sorted({round((i + 1) * n_blocks / 4) - 1 for i in range(4)})  # e.g. 12 -> [2, 5, 8, 11]


class LinearSegHead(nn.Module):
    """BN + 1x1 conv on the concatenated maps (each resized to the largest map's grid)."""

    def __init__(self, in_dims: list[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        dim = sum(in_dims)
        self.in_dims, self.num_classes = list(in_dims), num_classes
        self.bn = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, maps: list[Tensor]) -> Tensor:
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [
            m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps
        ]
        return self.classifier(self.dropout(self.bn(torch.cat(maps, dim=1))))


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class MultiScaleDecoder(nn.Module):
    """DPT-style reassemble (ViT) + FPN top-down fusion -> logits at the finest level (stride 4 for ViT/16)."""

    SCALES = (4.0, 2.0, 1.0, 0.5)  # reassemble factors for same-resolution (ViT) maps, finest first

    def __init__(self, in_dims: list[int], num_classes: int, width: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dims, self.num_classes = list(in_dims), num_classes
        self.project = nn.ModuleList(nn.Conv2d(d, width, kernel_size=1) for d in in_dims)
        self.smooth = nn.ModuleList(_conv_bn_relu(width, width) for _ in in_dims)
        self.fuse = nn.ModuleList(_conv_bn_relu(width, width) for _ in in_dims[:-1])
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def _reassemble(self, maps: list[Tensor]) -> list[Tensor]:
        """Same-size maps (ViT) -> a pyramid; maps of different sizes (ConvNeXt) are kept as they are."""
        if len({tuple(m.shape[-2:]) for m in maps}) > 1:
            return maps
        scales = self.SCALES[: len(maps)]  # fewer layers (tiny test backbones): the finest levels
        h, w = maps[0].shape[-2:]
        return [
            m
            if s == 1.0
            else F.interpolate(
                m, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False
            )
            for m, s in zip(maps, scales, strict=False)
        ] + maps[len(scales) :]

    def forward(self, maps: list[Tensor]) -> Tensor:
        levels = [
            smooth(proj(m)) for m, proj, smooth in zip(self._reassemble(maps), self.project, self.smooth, strict=True)
        ]
        levels = sorted(levels, key=lambda t: t.shape[-1] * t.shape[-2], reverse=True)  # finest first
        x = levels[-1]
        for level, fuse in zip(reversed(levels[:-1]), self.fuse, strict=True):
            x = fuse(level + F.interpolate(x, size=level.shape[-2:], mode="bilinear", align_corners=False))
        return self.classifier(self.dropout(x))


def build_head(cfg: HeadConfig, in_dims: list[int], num_classes: int) -> nn.Module:
    if cfg.type == "linear":
        return LinearSegHead(in_dims, num_classes, cfg.dropout)
    if cfg.type == "m2f":
        raise ValueError("the m2f head reads the image too: build it with dinotune.model.build_segmenter")
    return MultiScaleDecoder(in_dims, num_classes, cfg.width, cfg.dropout)


__all__ = ["HeadConfig", "LinearSegHead", "MultiScaleDecoder", "build_head", "layer_indices"]
