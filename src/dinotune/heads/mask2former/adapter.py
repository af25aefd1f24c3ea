"""The DINOv3 ViT-Adapter: a convolutional pyramid (strides 4..32) that reads the ViT's features.

A small CNN (the spatial prior module, SPM) gives maps at strides 8/16/32 whose pixels, as queries,
attend with deformable attention to the normed patch tokens of 4 ViT blocks (one "extractor" per
block, two more after the last). The ViT tokens themselves are not changed (the official adapter has
no injector). The outputs add the resized ViT maps and a transposed-conv upsampling for stride 4, and
go through BatchNorm. Names follow `dinov3.eval.segmentation.models.backbone.dinov3_adapter` (without
its `backbone`, which dinotune holds in the `Segmenter`), so the released adapter weights load strictly.
Strides are `H // 16` as in the official code: inputs must be multiples of 32.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotune.heads.mask2former.msdeform import MSDeformAttn, Shapes, reference_points

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """A ResNet-like stem: maps at strides 4, 8, 16, 32, projected to the ViT width."""

    def __init__(self, inplanes: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn_relu(in_chans, inplanes, 2),
            *_conv_bn_relu(inplanes, inplanes, 1),
            *_conv_bn_relu(inplanes, inplanes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, kernel_size=1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, kernel_size=1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, kernel_size=1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, kernel_size=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)]


class DWConv(nn.Module):
    """Depthwise 3x3 conv applied to each of the three concatenated token maps (strides 8, 16, 32)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, shapes: Shapes) -> Tensor:
        b, _, c = x.shape
        parts = x.split([h * w for h, w in shapes], dim=1)
        return torch.cat(
            [
                self.dwconv(p.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
                for p, (h, w) in zip(parts, shapes, strict=True)
            ],
            dim=1,
        )


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, shapes: Shapes) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.dwconv(self.fc1(x), shapes)))))


class DropPath(nn.Module):
    """Stochastic depth on a residual branch, per sample (only in training)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate <= 0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.rate)
        return x * keep / (1 - self.rate)


class Extractor(nn.Module):
    """SPM tokens (queries) attend to one ViT block's patch tokens, then a ConvFFN; both residual."""

    def __init__(self, dim: int, n_heads: int, n_points: int, ratio: float, ffn_ratio: float, drop_path: float):
        super().__init__()
        self.query_norm = LayerNorm(dim)
        self.feat_norm = LayerNorm(dim)
        self.attn = MSDeformAttn(dim, n_levels=1, n_heads=n_heads, n_points=n_points, ratio=ratio)
        self.ffn = ConvFFN(dim, int(dim * ffn_ratio))
        self.ffn_norm = LayerNorm(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, query: Tensor, refs: Tensor, feat: Tensor, feat_shape: tuple[int, int], shapes: Shapes) -> Tensor:
        query = query + self.attn(self.query_norm(query), refs, self.feat_norm(feat), [feat_shape])
        return query + self.drop_path(self.ffn(self.ffn_norm(query), shapes))


class InteractionBlock(nn.Module):
    """One extractor per ViT block read; the last block has two extra extractors (official layout)."""

    def __init__(self, extra: bool, **kwargs: float) -> None:
        super().__init__()
        self.extractor = Extractor(**kwargs)  # type: ignore[arg-type]
        self.extra_extractors = nn.Sequential(*[Extractor(**kwargs) for _ in range(2)]) if extra else None  # type: ignore[arg-type]

    def forward(self, query: Tensor, refs: Tensor, feat: Tensor, feat_shape: tuple[int, int], shapes: Shapes) -> Tensor:
        query = self.extractor(query, refs, feat, feat_shape, shapes)
        for extractor in self.extra_extractors or ():
            query = extractor(query, refs, feat, feat_shape, shapes)
        return query


class DINOv3Adapter(nn.Module):
    """Image + the normed patch maps of 4 ViT blocks -> 4 maps of width `dim` at strides 4, 8, 16, 32."""

    def __init__(
        self,
        dim: int,
        n_blocks: int = 4,
        *,
        conv_inplane: int = 64,
        n_points: int = 4,
        n_heads: int = 16,
        ratio: float = 0.5,
        ffn_ratio: float = 0.25,
        drop_path: float = 0.3,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.randn(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, in_chans)
        block = partial(InteractionBlock, dim=dim, n_heads=n_heads, n_points=n_points, ratio=ratio,
                        ffn_ratio=ffn_ratio, drop_path=drop_path)  # fmt: skip
        self.interactions = nn.Sequential(*[block(extra=i == n_blocks - 1) for i in range(n_blocks)])
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.BatchNorm2d(dim) for _ in range(4))

    def forward(self, images: Tensor, feats: list[Tensor]) -> list[Tensor]:
        h, w = images.shape[-2] // 16, images.shape[-1] // 16
        c1, *levels = self.spm(images)
        shapes = [(int(c.shape[-2]), int(c.shape[-1])) for c in levels]
        query = torch.cat([c.flatten(2).transpose(1, 2) + self.level_embed[i] for i, c in enumerate(levels)], dim=1)
        refs = reference_points(shapes, images.device)
        for block, feat in zip(self.interactions, feats, strict=True):
            tokens = feat.flatten(2).transpose(1, 2)
            query = block(query, refs, tokens, (int(feat.shape[-2]), int(feat.shape[-1])), shapes)
        b, _, dim = query.shape
        c2, c3, c4 = (
            part.transpose(1, 2).reshape(b, dim, sh, sw)
            for part, (sh, sw) in zip(query.split([sh * sw for sh, sw in shapes], dim=1), shapes, strict=True)
        )
        c1 = self.up(c2) + c1
        sizes = [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), (h // 2, w // 2)]
        vit = [
            F.interpolate(f, size=s, mode="bilinear", align_corners=False) for f, s in zip(feats, sizes, strict=True)
        ]
        maps = [c + v for c, v in zip((c1, c2, c3, c4), vit, strict=True)]
        return [norm(m) for norm, m in zip((self.norm1, self.norm2, self.norm3, self.norm4), maps, strict=True)]


__all__ = ["DINOv3Adapter", "SpatialPriorModule"]
