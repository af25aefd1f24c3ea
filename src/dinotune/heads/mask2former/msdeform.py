"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

Each query looks at `n_points` learned offsets around its reference point on every level and mixes
the bilinearly sampled values with softmax weights. The official DINOv3 code falls back to exactly
this `grid_sample` form when its CUDA op is missing; here it is the only form, so the head runs (and
trains: autograd goes through `grid_sample`) on any device and exports to ONNX (GridSample, opset 16).
Parameter names follow the official `MSDeformAttn`, so its weights load as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shapes = list[tuple[int, int]]


def deform_sample(value: Tensor, shapes: Shapes, locations: Tensor, weights: Tensor) -> Tensor:
    """value (B, S, M, D) over levels `shapes`; locations (B, Q, M, L, P, 2) in [0, 1] (x, y);
    weights (B, Q, M, L, P) -> (B, Q, M * D)."""
    b, _, heads, dim = value.shape
    _, queries, _, _, points, _ = locations.shape
    grids = 2 * locations - 1  # grid_sample's [-1, 1] with align_corners=False
    sampled = []
    for level, part in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[level]
        maps = part.flatten(2).transpose(1, 2).reshape(b * heads, dim, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*M, Q, P, 2)
        sampled.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*M, D, Q, L*P)
    mix = weights.transpose(1, 2).reshape(b * heads, 1, queries, len(shapes) * points)
    return (stacked * mix).sum(-1).view(b, heads * dim, queries).transpose(1, 2)


def reference_points(shapes: Shapes, device: torch.device) -> Tensor:
    """Pixel centres of every level, normalised to [0, 1], as (1, sum(h*w), 1, 2) in (x, y) order."""
    points = []
    for h, w in shapes:
        ys = torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device) / h
        xs = torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
    return torch.cat(points, 0)[None, :, None]


class MSDeformAttn(nn.Module):
    """Deformable attention of queries over `n_levels` flattened maps; values projected to `ratio * dim`."""

    def __init__(self, dim: int, n_levels: int, n_heads: int, n_points: int, ratio: float = 1.0) -> None:
        super().__init__()
        if dim % n_heads or int(dim * ratio) % n_heads:
            raise ValueError(f"dim {dim} (x ratio {ratio}) must be divisible by the {n_heads} heads")
        self.dim, self.n_levels, self.n_heads, self.n_points = dim, n_levels, n_heads, n_points
        self.value_dim = int(dim * ratio)
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, self.value_dim)
        self.output_proj = nn.Linear(self.value_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on rings of radius 1..P around the reference point, one direction per head."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        ring = ring.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        ring = ring * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, refs: Tensor, inputs: Tensor, shapes: Shapes) -> Tensor:
        """query (B, Q, C); refs (B or 1, Q, L, 2) in [0, 1]; inputs (B, sum(h*w), C) -> (B, Q, C)."""
        b, queries, _ = query.shape
        value = self.value_proj(inputs).view(b, inputs.shape[1], self.n_heads, self.value_dim // self.n_heads)
        offsets = self.sampling_offsets(query).view(b, queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(b, queries, self.n_heads, self.n_levels, self.n_points)
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = refs[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(deform_sample(value, shapes, locations, weights))


__all__ = ["MSDeformAttn", "deform_sample", "reference_points"]
