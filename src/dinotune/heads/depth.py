"""Depth heads over backbone feature maps; both predict depth as a weighted sum of bin centres.

- `BinnedDepthHead`: the DINOv2/v3 linear depth protocol: the class token concatenated to the patch
  tokens of the last layer (or each of the last 4), BatchNorm, a 1x1 conv to `bins` scores (256 in the
  official setting), upsampled x4, turned into weights ("linear": ReLU + 0.1 then normalised, the
  official rule; or softmax) and summed against bin centres spaced linearly (official) or in log
  between min and max depth. It measures how much metric geometry the frozen features carry.
- `DPTDepthHead`: DPT on 4 evenly spaced blocks: reassemble (class token read out by projection, maps
  resampled to strides 4/8/16/32 with transposed / strided convs), fusion blocks of residual conv
  units from coarse to fine, then a small conv head at twice the finest resolution ending in the same
  binned output.
Heads return depth (B, 1, h, w) at their own resolution; the model resizes it to the image bilinearly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from dinotune.config import StrictModel


class DepthHeadConfig(StrictModel):
    """The `head:` section of a depth config."""

    type: Literal["linear", "dpt"] = Field("linear", description="linear (official binned protocol) or dpt (4 layers).")
    layers: Literal["last", "last4"] = Field("last4", description="linear: last block or last 4 (official 'ms').")
    bins: int = Field(256, ge=2, description="Depth bins (official: 256).")
    spacing: Literal["linear", "log"] = Field("linear", description="Bin centres spaced linearly (official) or in log.")
    norm: Literal["linear", "softmax"] = Field("linear", description="Weights: linear (ReLU+0.1, official) or softmax.")
    cls_token: bool = Field(True, description="Concatenate the class token to every patch token (official).")
    width: int = Field(96, ge=8, description="dpt: channels of the fusion blocks.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the head input (0: off).")


def dpt_layers(n_blocks: int) -> list[int]:
    """4 evenly spaced blocks (12 -> [2, 5, 8, 11]); fewer than 4 blocks (tests): in order, the last repeated."""
    if n_blocks < 4:
        return [min(i, n_blocks - 1) for i in range(4)]
    return [round((i + 1) * n_blocks / 4) - 1 for i in range(4)]


def depth_layers(n_blocks: int, cfg: DepthHeadConfig) -> list[int]:
    if cfg.type == "dpt":
        return dpt_layers(n_blocks)
    return [n_blocks - 1] if cfg.layers == "last" else list(range(max(0, n_blocks - 4), n_blocks))


class BinOutput(nn.Module):
    """Bin scores (B, N, h, w) -> depth (B, 1, h, w): weights from the scores, times the bin centres."""

    def __init__(self, bins: int, min_depth: float, max_depth: float, spacing: str, norm: str) -> None:
        super().__init__()
        if spacing == "log":
            centres = torch.exp(torch.linspace(math.log(max(min_depth, 1e-3)), math.log(max_depth), bins))
        else:
            centres = torch.linspace(min_depth, max_depth, bins)
        self.register_buffer("centres", centres.view(1, bins, 1, 1))
        self.norm = norm

    def forward(self, scores: Tensor) -> Tensor:
        scores = scores.float()
        if self.norm == "softmax":
            weights = scores.softmax(dim=1)
        else:
            weights = torch.relu(scores) + 0.1
            weights = weights / weights.sum(dim=1, keepdim=True)
        return (weights * self.centres).sum(dim=1, keepdim=True)


def _with_cls(maps: list[Tensor], cls: list[Tensor]) -> list[Tensor]:
    """Each map with its class token broadcast over the grid, concatenated on channels."""
    return [torch.cat([m, c[:, :, None, None].expand_as(m)], dim=1) for m, c in zip(maps, cls, strict=True)]


class BinnedDepthHead(nn.Module):
    """BN + 1x1 conv to bins on [patch tokens, class token] of the chosen layers; x4 upsampling."""

    num_classes = 1

    def __init__(self, in_dims: list[int], cfg: DepthHeadConfig, min_depth: float, max_depth: float) -> None:
        super().__init__()
        self.cls_token = cfg.cls_token
        dim = sum(in_dims) * (2 if cfg.cls_token else 1)
        self.bn = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout2d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.conv_depth = nn.Conv2d(dim, cfg.bins, kernel_size=1)
        nn.init.normal_(self.conv_depth.weight, std=0.01)
        nn.init.zeros_(self.conv_depth.bias)
        self.output = BinOutput(cfg.bins, min_depth, max_depth, cfg.spacing, cfg.norm)

    def forward(self, maps: list[Tensor], cls: list[Tensor]) -> Tensor:
        if self.cls_token:
            maps = _with_cls(maps, cls)
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])  # the finest grid
        maps = [
            m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps
        ]
        scores = self.conv_depth(self.dropout(self.bn(torch.cat(maps, dim=1))))
        scores = F.interpolate(scores, scale_factor=4, mode="bilinear", align_corners=False)
        return self.output(scores)


class ResidualConvUnit(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class FusionBlock(nn.Module):
    """DPT fusion: the coarser path (resized to the skip's grid) plus a refined skip, refined again."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.skip_unit, self.unit = ResidualConvUnit(width), ResidualConvUnit(width)
        self.project = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor | None, skip: Tensor) -> Tensor:
        out = self.skip_unit(skip)
        if x is not None:
            out = out + F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(self.unit(out))


def _resample(dim: int, scale: float) -> nn.Module:
    if scale > 1:
        return nn.ConvTranspose2d(dim, dim, kernel_size=int(scale), stride=int(scale))
    if scale < 1:
        return nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)
    return nn.Identity()


class DPTDepthHead(nn.Module):
    """Reassemble 4 layers to a pyramid (ViT; ConvNeXt stages already are one), fuse coarse to fine, predict."""

    num_classes = 1
    SCALES = (4.0, 2.0, 1.0, 0.5)

    def __init__(
        self, in_dims: list[int], cfg: DepthHeadConfig, min_depth: float, max_depth: float, same_grid: bool = True
    ) -> None:
        super().__init__()
        self.cls_token = cfg.cls_token
        width = cfg.width
        self.readout = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * d, d, 1), nn.GELU()) if cfg.cls_token else nn.Identity() for d in in_dims
        )
        scales = self.SCALES if same_grid else (1.0,) * len(in_dims)
        self.resample = nn.ModuleList(_resample(d, s) for d, s in zip(in_dims, scales, strict=False))
        self.project = nn.ModuleList(nn.Conv2d(d, width, 3, padding=1, bias=False) for d in in_dims)
        self.fusion = nn.ModuleList(FusionBlock(width) for _ in in_dims)
        self.dropout = nn.Dropout2d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = nn.Sequential(
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.Conv2d(width // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, cfg.bins, 1),
        )
        self.output = BinOutput(cfg.bins, min_depth, max_depth, cfg.spacing, cfg.norm)

    def forward(self, maps: list[Tensor], cls: list[Tensor]) -> Tensor:
        if self.cls_token:
            maps = _with_cls(maps, cls)
        levels = [
            proj(res(read(m)))
            for m, read, res, proj in zip(maps, self.readout, self.resample, self.project, strict=True)
        ]
        levels = sorted(levels, key=lambda t: t.shape[-1] * t.shape[-2])  # coarsest first
        x = None
        for level, fuse in zip(levels, self.fusion, strict=True):
            x = fuse(x, level)
        assert x is not None
        return self.output(self.head(self.dropout(x)))


def build_depth_head(
    cfg: DepthHeadConfig, in_dims: list[int], min_depth: float, max_depth: float, same_grid: bool = True
) -> nn.Module:
    if cfg.type == "dpt":
        return DPTDepthHead(in_dims, cfg, min_depth, max_depth, same_grid)
    return BinnedDepthHead(in_dims, cfg, min_depth, max_depth)


__all__ = ["BinnedDepthHead", "DPTDepthHead", "DepthHeadConfig", "build_depth_head", "depth_layers", "dpt_layers"]
