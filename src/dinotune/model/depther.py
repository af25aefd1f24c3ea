"""`DepthModel`: backbone + depth head in plain PyTorch, what every verb runs on a `depth` card.

It is a `Segmenter` with one output channel holding metric depth (metres), so saving, loading, padding
and export follow the segmentation path; it differs in what the head reads (patch maps and class
tokens) and in inference: windows and views average depth itself (there is no softmax).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotune.backbones import Backbone
from dinotune.heads.depth import DepthHeadConfig, build_depth_head, depth_layers
from dinotune.model.inference import tta_average
from dinotune.model.segmenter import Segmenter
from dinotune.model.slide import InferenceConfig


class DepthModel(Segmenter):
    """Image (B, C, H, W), any H/W -> depth (B, 1, H, W) in metres, inside [min_depth, max_depth]."""

    def __init__(self, backbone: Backbone, head: nn.Module, layers: list[int]) -> None:
        super().__init__(backbone, head, layers)

    def features(self, images: Tensor) -> Any:  # type: ignore[override]
        """(patch maps, class tokens) of `layers` (repeated blocks allowed); no autograd through a frozen backbone."""
        unique = sorted(set(self.layers))
        frozen = not any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            pairs = self.backbone.get_intermediate_layers(images, n=unique, reshape=True, return_class_token=True)
        picked = [pairs[unique.index(layer)] for layer in self.layers]
        return [m.float() for m, _ in picked], [c.float() for _, c in picked]

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        multiple = self.backbone.input_multiple
        padded = F.pad(images, (0, (-w) % multiple, 0, (-h) % multiple))
        maps, cls = self.features(padded)
        depth = self.head(maps, cls)
        depth = F.interpolate(depth, size=tuple(padded.shape[-2:]), mode="bilinear", align_corners=False)
        return depth[..., :h, :w]


def grid_info(backbone: Backbone, layers: list[int]) -> tuple[list[int], bool]:
    """Channels of each chosen layer and whether they share one grid (ViT) or form a pyramid (ConvNeXt)."""
    size = backbone.input_multiple * 4
    param = next(backbone.parameters())
    probe = torch.zeros(1, backbone.info.in_chans, size, size, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        maps = backbone.get_intermediate_layers(probe, n=sorted(set(layers)), reshape=True)
    by_layer = dict(zip(sorted(set(layers)), maps, strict=True))
    return [int(by_layer[i].shape[1]) for i in layers], len({tuple(m.shape[-2:]) for m in maps}) == 1


def build_depth_model(backbone: Backbone, cfg: DepthHeadConfig, min_depth: float, max_depth: float) -> DepthModel:
    layers = depth_layers(backbone.n_blocks, cfg)
    dims, same_grid = grid_info(backbone, layers)
    return DepthModel(backbone, build_depth_head(cfg, dims, min_depth, max_depth, same_grid), layers)


@torch.no_grad()
def predict_depth(model: Any, images: Tensor, cfg: InferenceConfig | None = None) -> Tensor:
    """Depth (B, 1, H, W) of whole images: one pass or sliding windows, averaged over flips and scales."""
    return tta_average(model, images, 1, cfg or InferenceConfig())


__all__ = ["DepthModel", "build_depth_model", "grid_info", "predict_depth"]
