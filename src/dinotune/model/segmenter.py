"""`Segmenter`: backbone + segmentation head in plain PyTorch (no Lightning), what every verb runs."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotune.backbones import Backbone
from dinotune.heads.segment import HeadConfig, build_head, layer_indices


class Segmenter(nn.Module):
    """Image (B, C, H, W), any H/W -> logits (B, K, H, W).

    Inputs that are not multiples of the backbone's patch/stride are zero-padded on the right/bottom and
    the logits cropped back, so whole-image and window inference accept any size.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, layers: list[int]) -> None:
        super().__init__()
        self.backbone, self.head, self.layers = backbone, head, list(layers)
        self.num_classes: int = head.num_classes  # type: ignore[assignment]

    @property
    def input_multiple(self) -> int:
        return self.backbone.input_multiple

    def features(self, images: Tensor) -> list[Tensor]:
        """The chosen layers' normalised patch maps (B, D, h, w); no autograd through a frozen backbone."""
        frozen = not any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return list(self.backbone.get_intermediate_layers(images, n=self.layers, reshape=True, norm=True))

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        multiple = self.backbone.input_multiple
        pad_h, pad_w = (-h) % multiple, (-w) % multiple
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return self.forward_maps(self.features(images), images.shape[-2:])[..., :h, :w]

    def forward_maps(self, maps: list[Tensor], size: tuple[int, ...]) -> Tensor:
        """Logits at `size` from the layers' patch maps: also what training on cached dense features runs."""
        logits = self.head([m.float() for m in maps])
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def feature_dims(backbone: Backbone, layers: list[int]) -> list[int]:
    """Channels of each chosen layer (ConvNeXt stages differ), from one tiny forward pass."""
    size = backbone.input_multiple * 2
    param = next(backbone.parameters())
    probe = torch.zeros(1, backbone.info.in_chans, size, size, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        return [int(m.shape[1]) for m in backbone.get_intermediate_layers(probe, n=layers, reshape=True)]


def build_segmenter(backbone: Backbone, head_cfg: HeadConfig, num_classes: int) -> Segmenter:
    layers = layer_indices(backbone.n_blocks, head_cfg)
    return Segmenter(backbone, build_head(head_cfg, feature_dims(backbone, layers), num_classes), layers)


class MaskSegmenter(Segmenter):
    """Backbone + `Mask2FormerHead`: the head reads the image too, inputs are padded to multiples of 32
    (the adapter's strides), and `forward` gives the log of the official semantic scores, so every
    consumer of `Segmenter` logits (argmax, softmax in sliding window / TTA, ONNX) works unchanged."""

    SCORE_FLOOR = 1e-6  # scores are >= 0; the floor keeps their log finite

    @property
    def input_multiple(self) -> int:
        return math.lcm(self.backbone.input_multiple, 32)

    def features(self, images: Tensor) -> list[Tensor]:
        """The maps of `layers`, which repeat blocks on backbones with fewer than 4 of them."""
        unique = sorted(set(self.layers))
        frozen = not any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            maps = self.backbone.get_intermediate_layers(images, n=unique, reshape=True, norm=True)
        return [maps[unique.index(layer)] for layer in self.layers]

    def outputs(self, images: Tensor) -> dict[str, Any]:
        """Mask2Former's raw dict for images whose sides are multiples of `input_multiple`."""
        return self.head(images, self.features(images))

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        multiple = self.input_multiple
        images = F.pad(images, (0, (-w) % multiple, 0, (-h) % multiple))
        scores = self.head.semantic(self.outputs(images), tuple(images.shape[-2:]))
        return scores.clamp_min(self.SCORE_FLOOR).log()[..., :h, :w]
