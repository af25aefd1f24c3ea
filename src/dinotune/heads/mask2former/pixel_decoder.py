"""Mask2Former's pixel decoder: a deformable-attention encoder over strides 32/16/8 and one FPN step to 4.

The three coarse adapter maps are projected to `hidden` channels, flattened together and refined by
`enc_layers` post-norm encoder layers whose deformable self-attention mixes all three scales; the
stride-4 map joins through a lateral 1x1 conv plus the upsampled stride-8 output. It returns the
per-pixel mask features (stride 4) and the three refined maps the transformer decoder attends to.
Names follow `dinov3.eval.segmentation.models.heads.pixel_decoder.MSDeformAttnPixelDecoder`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotune.heads.mask2former.msdeform import MSDeformAttn, Shapes, reference_points


def sine_position(x: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised 2-D sine embedding of a (B, C, H, W) map's grid -> (B, 2 * num_feats, H, W)."""
    b, _, h, w = x.shape
    eps, scale = 1e-6, 2 * math.pi
    ones = torch.ones((b, h, w), dtype=torch.float32, device=x.device)
    y_embed, x_embed = ones.cumsum(1), ones.cumsum(2)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x, pos_y = x_embed[..., None] / dim_t, y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class EncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then an FFN; post-norm, ReLU."""

    def __init__(self, dim: int, ffn: int, n_levels: int, n_heads: int, n_points: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: Tensor, pos: Tensor, refs: Tensor, shapes: Shapes) -> Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, refs, src, shapes)))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class DeformableEncoder(nn.Module):
    """`encoder.encoder.layers.*` and `encoder.level_encoding`, as the official module tree nests them."""

    def __init__(self, dim: int, ffn: int, n_layers: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.encoder = Encoder([EncoderLayer(dim, ffn, n_levels, n_heads, n_points) for _ in range(n_layers)])
        self.level_encoding = nn.Parameter(torch.randn(n_levels, dim))
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.encoder.layers:
            layer.self_attn.reset_parameters()

    def forward(self, srcs: list[Tensor], pos: list[Tensor]) -> tuple[Tensor, Shapes]:
        shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        flat_pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_encoding[i].view(1, 1, -1) for i, p in enumerate(pos)], 1
        )
        refs = reference_points(shapes, flat.device)
        for layer in self.encoder.layers:
            flat = layer(flat, flat_pos, refs, shapes)
        return flat, shapes


class ConvNorm(nn.Conv2d):
    """Conv (no bias) + GroupNorm(32) (+ ReLU): detectron2's `Conv2d(norm=...)`, keys `weight`, `norm.*`."""

    def __init__(self, cin: int, cout: int, kernel: int, relu: bool) -> None:
        super().__init__(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.GroupNorm(32, cout)
        self.relu = relu
        nn.init.kaiming_uniform_(self.weight, a=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class PixelDecoder(nn.Module):
    """Adapter maps [s4, s8, s16, s32] -> (mask features at s4, [s32, s16, s8] maps for the decoder)."""

    def __init__(
        self, in_dim: int, hidden: int, *, enc_layers: int = 6, ffn: int = 4096, n_heads: int = 16, n_points: int = 4
    ) -> None:
        super().__init__()
        if hidden % 32:
            raise ValueError(f"hidden_dim {hidden} must be a multiple of 32 (GroupNorm with 32 groups)")
        self.hidden = hidden
        self.input_convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_dim, hidden, kernel_size=1), nn.GroupNorm(32, hidden)) for _ in range(3)
        )
        for proj in self.input_convs:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.encoder = DeformableEncoder(hidden, ffn, enc_layers, 3, n_heads, n_points)
        self.mask_feature = nn.Conv2d(hidden, hidden, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_feature.weight, a=1)
        nn.init.zeros_(self.mask_feature.bias)
        self.lateral_convs = nn.ModuleList([ConvNorm(in_dim, hidden, 1, relu=False)])
        self.output_convs = nn.ModuleList([ConvNorm(hidden, hidden, 3, relu=True)])

    def forward(self, maps: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        coarse = maps[:0:-1]  # strides 32, 16, 8
        srcs = [conv(m.float()) for conv, m in zip(self.input_convs, coarse, strict=True)]
        pos = [sine_position(m, self.hidden // 2) for m in coarse]
        flat, shapes = self.encoder(srcs, pos)
        b = flat.shape[0]
        outs = [
            part.transpose(1, 2).reshape(b, -1, h, w)
            for part, (h, w) in zip(flat.split([h * w for h, w in shapes], dim=1), shapes, strict=True)
        ]
        fine = self.lateral_convs[0](maps[0].float())
        fine = fine + F.interpolate(outs[-1], size=fine.shape[-2:], mode="bilinear", align_corners=False)
        fine = self.output_convs[0](fine)
        return self.mask_feature(fine), outs


__all__ = ["PixelDecoder", "sine_position"]
