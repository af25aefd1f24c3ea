"""`Segmenter`: backbone + segmentation head in plain PyTorch, and its folder format.

A segmentation model folder holds `segmentation.json` (the card: classes, colours, preprocessing,
backbone source, head config, layers, inference settings, metrics), `head.safetensors` (head weights
and BatchNorm statistics) and, when the backbone's weights changed in training, `backbone/` (a Hugging
Face folder). A frozen backbone is named by its source, as the classification model folder does, so a
linear probe on a 7B backbone does not copy its weights. Loading needs neither Lightning nor the run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotune.backbones import Backbone
from dinotune.data.preprocessing import Preprocessing
from dinotune.errors import CheckpointError
from dinotune.segmentation.heads import HeadConfig, build_head

log = logging.getLogger(__name__)
FORMAT = "dinotune-segmentation/1"
CARD = "segmentation.json"


class Segmenter(nn.Module):
    """Image (B, C, H, W), any H/W -> logits (B, K, H, W).

    Inputs that are not multiples of the backbone's patch/stride are zero-padded on the right/bottom and
    the logits cropped back, so whole-image and window inference accept any size.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, layers: list[int]) -> None:
        super().__init__()
        self.backbone, self.head, self.layers = backbone, head, list(layers)
        self.num_classes: int = head.num_classes  # type: ignore[assignment]

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
        logits = self.head([f.float() for f in self.features(images)])
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


def feature_dims(backbone: Backbone, layers: list[int]) -> list[int]:
    """Channels of each chosen layer (ConvNeXt stages differ), from one tiny forward pass."""
    size = backbone.input_multiple * 2
    param = next(backbone.parameters())
    probe = torch.zeros(1, backbone.info.in_chans, size, size, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        return [int(m.shape[1]) for m in backbone.get_intermediate_layers(probe, n=layers, reshape=True)]


def build_segmenter(backbone: Backbone, head_cfg: HeadConfig, num_classes: int) -> Segmenter:
    from dinotune.segmentation.heads import layer_indices

    layers = layer_indices(backbone.n_blocks, head_cfg)
    return Segmenter(backbone, build_head(head_cfg, feature_dims(backbone, layers), num_classes), layers)


@dataclass
class SegmentationCard:
    """Contents of `segmentation.json`."""

    classes: list[str]
    colours: list[list[int]]
    preprocessing: Preprocessing
    backbone: dict[str, Any]  # source, arch, in_chans, seed, identity, weights_dir (None: load from source)
    head: dict[str, Any]  # HeadConfig fields
    layers: list[int]
    ignore_index: int = 255
    inference: dict[str, Any] = field(default_factory=dict)  # InferenceConfig fields
    metrics: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    task: str = "segment"
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str, source: str) -> SegmentationCard:
        from dinotune.model import card_from_json

        return card_from_json(cls, text, source, FORMAT, "segmentation card")


def save_segmenter(folder: str | Path, model: Segmenter, card: SegmentationCard, save_backbone: bool) -> Path:
    """Write segmentation.json + head.safetensors (+ backbone/ when its weights were trained)."""
    from safetensors.torch import save_file

    from dinotune.atomic import atomic_dir, atomic_path, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    with atomic_path(folder / "head.safetensors") as tmp:
        save_file(state, str(tmp))
    card.layers = list(model.layers)
    if save_backbone:
        with atomic_dir(folder / "backbone", overwrite=True) as tmp:
            model.backbone.hf.save_pretrained(tmp)
        card.backbone["weights_dir"] = "backbone"
    else:
        card.backbone.pop("weights_dir", None)
    write_text(folder / CARD, card.to_json())
    return folder


def read_segmentation_card(folder: str | Path) -> SegmentationCard:
    path = Path(folder) / CARD
    if not path.is_file():
        raise CheckpointError(f"'{folder}' is not a dinotune segmentation model folder: it has no {CARD}.")
    return SegmentationCard.from_json(path.read_text(), str(path))


def load_segmenter(folder: str | Path, device: str | torch.device | None = None) -> tuple[Segmenter,
                                                                                          SegmentationCard]:
    """The model of a segmentation run or model folder, in eval mode, and its card."""
    from safetensors.torch import load_file

    from dinotune.device import resolve_device
    from dinotune.model import load_card_backbone

    folder = Path(folder)
    card = read_segmentation_card(folder)
    backbone = load_card_backbone(folder, card.backbone)
    head_cfg = HeadConfig(**card.head)
    head = build_head(head_cfg, feature_dims(backbone, card.layers), len(card.classes))
    path = folder / "head.safetensors"
    if not path.is_file():
        raise CheckpointError(f"'{folder}' has {CARD} but no head.safetensors.")
    try:
        head.load_state_dict(load_file(str(path)))
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match the head in {CARD}: {str(err).splitlines()[0]}") from None
    model = Segmenter(backbone, head, card.layers)
    return model.to(resolve_device(device)).eval(), card


__all__ = ["CARD", "SegmentationCard", "Segmenter", "build_segmenter", "feature_dims", "load_segmenter",
           "read_segmentation_card", "save_segmenter"]
