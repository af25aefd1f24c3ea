"""`Detector`: backbone + simple feature pyramid + FCOS head in plain PyTorch, what every verb runs.

`forward(images)` gives the raw per-position outputs the loss trains on; `decoded(images)` gives
what the ONNX graph outputs, xyxy boxes (B, L, 4) and per-class scores (B, L, K) before NMS, with
score = sqrt(sigmoid(class) x sigmoid(centerness)); `predict(images)` runs the numpy post-processing
of `dinotune.model.nms` on them, the same code the ONNX twin runs. Inputs must have sides that are
multiples of `input_multiple` (the letterboxed square of the card's image size always is).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dinotune.backbones import Backbone
from dinotune.errors import CheckpointError
from dinotune.heads.detect import DetectHeadConfig, FCOSHead, SimpleFeaturePyramid, decode_boxes, locations
from dinotune.model.nms import PostprocessConfig, postprocess, postprocess_config


class DetectionHead(nn.Module):
    """Pyramid + FCOS head: what `head.safetensors` of a detection model holds."""

    def __init__(self, sources: list[tuple[int, int]], num_classes: int, cfg: DetectHeadConfig) -> None:
        super().__init__()
        self.num_classes, self.strides = num_classes, list(cfg.strides)
        self.pyramid = SimpleFeaturePyramid(sources, cfg.strides, cfg.width)
        self.fcos = FCOSHead(cfg.width, num_classes, cfg.strides, cfg.tower_convs)

    def forward(self, maps: list[Tensor]) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        levels = self.pyramid(maps)
        points = locations([tuple(level.shape[-2:]) for level in levels], self.strides, levels[0].device)
        return self.fcos(levels), points


class Detector(nn.Module):
    """Images (B, C, H, W) -> FCOS outputs over every pyramid position."""

    def __init__(self, backbone: Backbone, head: DetectionHead, layers: list[int],
                 postprocess_cfg: PostprocessConfig | None = None) -> None:  # fmt: skip
        super().__init__()
        self.backbone, self.head, self.layers = backbone, head, list(layers)
        self.num_classes = head.num_classes
        self.postprocess_cfg = postprocess_cfg or PostprocessConfig()

    @property
    def input_multiple(self) -> int:
        return math.lcm(self.backbone.input_multiple, max(self.head.strides))

    def features(self, images: Tensor) -> list[Tensor]:
        frozen = not any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            maps = self.backbone.get_intermediate_layers(images, n=self.layers, reshape=True, norm=True)
        return [m.float() for m in maps]

    def forward(self, images: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """((class logits, ltrb distances, centerness logits), positions (L, 3))."""
        return self.head(self.features(images))

    def decoded(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes (B, L, 4) xyxy in input pixels and per-class scores (B, L, K): the ONNX graph's outputs."""
        (logits, distances, centerness), points = self(images)
        scores = (torch.sigmoid(logits) * torch.sigmoid(centerness)[..., None]).sqrt()
        return decode_boxes(points, distances), scores

    def predict(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Per image {"boxes" (M, 4), "scores" (M,), "labels" (M,)} in input pixels, after NMS."""
        with torch.no_grad():
            boxes, scores = self.decoded(images)
        return [as_tensors(postprocess(b.float().cpu().numpy(), s.float().cpu().numpy(), self.postprocess_cfg))
                for b, s in zip(boxes, scores, strict=True)]  # fmt: skip


def as_tensors(detections: dict[str, Any]) -> dict[str, Tensor]:
    return {key: torch.from_numpy(value) for key, value in detections.items()}


def detection_layers(backbone: Backbone, cfg: DetectHeadConfig) -> tuple[list[int], list[tuple[int, int]]]:
    """The blocks/stages the pyramid reads and their (channels, stride), from one tiny forward pass:
    a plain ViT gives one map (block `cfg.layer`), a hierarchical backbone its stages."""
    size = math.lcm(backbone.input_multiple, 64) * 2
    param = next(backbone.parameters())
    probe = torch.zeros(1, backbone.info.in_chans, size, size, device=param.device, dtype=param.dtype)
    every = list(range(backbone.n_blocks))
    with torch.no_grad():
        maps = backbone.get_intermediate_layers(probe, n=every, reshape=True)
    strides = [size // int(m.shape[-1]) for m in maps]
    if len(set(strides)) == 1:  # plain ViT: one map, ViTDet style
        layer = every[cfg.layer]
        return [layer], [(int(maps[layer].shape[1]), strides[layer])]
    return every, [(int(m.shape[1]), s) for m, s in zip(maps, strides, strict=True)]


def build_detector(backbone: Backbone, cfg: DetectHeadConfig, num_classes: int,
                   postprocess_cfg: PostprocessConfig | None = None) -> Detector:  # fmt: skip
    layers, sources = detection_layers(backbone, cfg)
    return Detector(backbone, DetectionHead(sources, num_classes, cfg), layers, postprocess_cfg)


def detector_from_card(backbone: Backbone, card: Any, path: Path) -> Detector:
    """A detector as the card describes it (head config, the layers and their channels/strides), its head
    not loaded yet; `path`, the head file, names the model in errors."""
    cfg = DetectHeadConfig(**card.head.get("config", {}))
    layers, sources = detection_layers(backbone, cfg)
    if card.head.get("layers") not in (None, layers):
        raise CheckpointError(f"{path}: the card's head reads layers {card.head['layers']}, this backbone gives "
                              f"{layers}; the backbone is not the one this model was trained on.")  # fmt: skip
    return Detector(backbone, DetectionHead(sources, len(card.classes), cfg), layers,
                    postprocess_config(card.inference))  # fmt: skip
