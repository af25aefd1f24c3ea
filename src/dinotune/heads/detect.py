"""Object detection head: a ViTDet simple feature pyramid and an FCOS head.

- `SimpleFeaturePyramid` (Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object
  Detection"): a plain ViT gives one stride-16 map; the pyramid is built from it alone, by transposed
  convolutions for the finer levels (stride 8: one, stride 4: two with LayerNorm + GELU between), the
  map itself for 16 and max pooling for 32 and 64, each followed by a 1x1 and a 3x3 convolution with
  LayerNorm. A hierarchical backbone (ConvNeXt) gives each level from its stage of that stride.
- `FCOSHead` (Tian et al. 2019, with the later "normbbox, centre on regression, GIoU" improvements):
  two convolution towers shared by every level (GroupNorm + ReLU), class logits whose bias starts at
  the focal-loss prior (p = 0.01, so background does not swamp the first steps), a learnable scale per
  level on the distances, and a centerness logit on the regression tower.

Outputs are flattened over levels, finest first: class logits (B, L, K), distances to the box sides
left/top/right/bottom in input pixels (B, L, 4) and centerness logits (B, L); `locations` gives the
(x, y) centre and stride of each of the L positions, as the loss and the decoder need them.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from dinotune.config import StrictModel

PRIOR = 0.01  # the focal-loss prior probability of the class logits at initialisation


class DetectHeadConfig(StrictModel):
    """The `head:` section of a detection config."""

    type: str = Field("fcos", pattern="^fcos$", description="fcos (one-stage, anchor-free).")
    strides: list[int] = Field(
        [8, 16, 32], min_length=1, description="Pyramid strides, powers of 2 from 4 to 64 (ViTDet: 8, 16, 32, 64)."
    )
    layer: int = Field(-1, description="ViT: the block whose map the pyramid is built from (-1: the last).")
    width: int = Field(64, ge=8, description="Channels of every pyramid level and tower convolution.")
    tower_convs: int = Field(2, ge=0, le=8, description="3x3 convolutions in each tower (FCOS: 4).")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (what ViTDet's pyramid normalises with)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _resample(dim: int, factor: float) -> tuple[nn.Module, int]:
    """Resample by a power of 2: transposed convolutions up (halving channels), max pooling down."""
    steps = round(math.log2(factor))
    layers: list[nn.Module] = []
    for step in range(abs(steps)):
        if steps > 0:
            if step:
                layers += [LayerNorm2d(dim), nn.GELU()]
            layers.append(nn.ConvTranspose2d(dim, max(dim // 2, 8), kernel_size=2, stride=2))
            dim = max(dim // 2, 8)
        else:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers), dim


class SimpleFeaturePyramid(nn.Module):
    """Backbone maps -> one map per stride, all `width` channels.

    `sources` are (channels, stride) of the maps the detector reads; each level takes the source of its
    own stride when there is one, else the nearest finer source (pooled down) or coarser one (up)."""

    def __init__(self, sources: list[tuple[int, int]], strides: list[int], width: int) -> None:
        super().__init__()
        self.strides = list(strides)
        self.source_of: list[int] = []
        self.resample, self.output = nn.ModuleList(), nn.ModuleList()
        for stride in strides:
            index = _nearest_source([s for _, s in sources], stride)
            dim, factor = sources[index][0], sources[index][1] / stride
            resample, dim = _resample(dim, factor)
            self.source_of.append(index)
            self.resample.append(resample)
            self.output.append(
                nn.Sequential(
                    nn.Conv2d(dim, width, 1, bias=False),
                    LayerNorm2d(width),
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    LayerNorm2d(width),
                )
            )

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [out(resample(maps[i])) for i, resample, out in zip(self.source_of, self.resample, self.output,
                                                                     strict=True)]  # fmt: skip


def _nearest_source(source_strides: list[int], stride: int) -> int:
    if stride in source_strides:
        return source_strides.index(stride)
    finer = [i for i, s in enumerate(source_strides) if s < stride]
    if finer:
        return max(finer, key=lambda i: source_strides[i])
    return min(range(len(source_strides)), key=lambda i: source_strides[i])


def _tower(width: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(min(32, width // 4), width), nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Pyramid levels -> (class logits, ltrb distances in pixels, centerness logits), flattened."""

    def __init__(self, width: int, num_classes: int, strides: list[int], tower_convs: int = 2) -> None:
        super().__init__()
        self.num_classes, self.strides = num_classes, list(strides)
        self.cls_tower, self.box_tower = _tower(width, tower_convs), _tower(width, tower_convs)
        self.cls_logits = nn.Conv2d(width, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(width, 4, 3, padding=1)
        self.centerness = nn.Conv2d(width, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(strides)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, levels: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        logits, distances, centerness = [], [], []
        for index, (x, stride) in enumerate(zip(levels, self.strides, strict=True)):
            cls, box = self.cls_tower(x), self.box_tower(x)
            logits.append(self.cls_logits(cls).flatten(2).transpose(1, 2))
            # exp keeps every distance positive with a gradient everywhere; x stride: in input pixels
            scaled = (self.scales[index] * self.box_pred(box)).clamp(max=math.log(1e4))
            distances.append((scaled.exp() * stride).flatten(2).transpose(1, 2))
            centerness.append(self.centerness(box).flatten(1))
        return torch.cat(logits, 1), torch.cat(distances, 1), torch.cat(centerness, 1)


def locations(sizes: list[tuple[int, int]], strides: list[int], device: torch.device | None = None) -> Tensor:
    """(L, 3): x, y of each position's centre in input pixels and its level's stride, finest level first."""
    rows = []
    for (h, w), stride in zip(sizes, strides, strict=True):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        centre = stride // 2
        rows.append(torch.stack([xs.flatten() * stride + centre, ys.flatten() * stride + centre,
                                 torch.full((h * w,), stride, device=device)], 1))  # fmt: skip
    return torch.cat(rows).float()


def decode_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """Centres (L, 2+) and ltrb distances (..., L, 4) -> xyxy boxes (..., L, 4)."""
    xy = points[:, :2]
    return torch.cat([xy - distances[..., :2], xy + distances[..., 2:]], dim=-1)


def level_sizes(height: int, width: int, strides: list[int]) -> list[tuple[int, int]]:
    """The map size of each level for an input of height x width (sides multiples of the coarsest stride)."""
    return [(height // s, width // s) for s in strides]


__all__ = ["DetectHeadConfig", "FCOSHead", "SimpleFeaturePyramid", "decode_boxes", "level_sizes", "locations"]
