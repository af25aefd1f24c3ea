"""Projection heads of self-supervised training (DINO on the class token, iBOT on patch tokens).

Released DINOv3 checkpoints ship without these heads, so continued pretraining always starts them
fresh: an MLP to a bottleneck, L2-normalisation, then K weight-normalised prototypes (a linear layer
whose rows are unit vectors, i.e. weight norm with the gain fixed at 1, as in DINO). The logits are
therefore cosine similarities to the prototypes, bounded in [-1, 1] before the temperature.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    """`n_layers` Linear layers (GELU between) to `bottleneck_dim`, then `out_dim` prototype scores."""

    def __init__(
        self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256, n_layers: int = 3
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError("DINOHead needs n_layers >= 1")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for index, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if index < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    @property
    def out_dim(self) -> int:
        return self.prototypes.shape[0]

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The prototypes: frozen during the first epoch(s) so they do not chase a still-random MLP."""
        return [self.prototypes]

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))
