"""A deployable model: backbone + head in plain PyTorch, and the folder format every verb reads.

`predict`, `evaluate`, `export` and `serve` load a model folder with `load_model` and never need
Lightning. The folder holds `model.json` (task, classes, preprocessing, backbone, head) and
`head.safetensors`; a backbone whose weights changed (fine-tuning, LoRA merged) is stored beside it as a
Hugging Face folder `backbone/`, otherwise `model.json` names the backbone source so a frozen probe on a
7B backbone does not copy 27 GB into every run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from dinotune.backbones import Backbone, load_backbone
from dinotune.data.preprocessing import Preprocessing
from dinotune.errors import CheckpointError
from dinotune.features.extract import compute_features
from dinotune.tasks.probe import LinearHead, build_input, parse_feature_choice

log = logging.getLogger(__name__)
FORMAT = "dinotune-model/1"


@dataclass
class ModelCard:
    """Contents of `model.json`."""

    task: str  # "classify"
    classes: list[str]
    preprocessing: Preprocessing
    backbone: dict[str, Any]  # source, arch, in_chans, seed, identity, weights_dir (None: load from source)
    head: dict[str, Any]  # type, file, feature_choice
    multilabel: bool = False
    license: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str, source: str) -> ModelCard:
        return card_from_json(cls, text, source, FORMAT, "model card")


CardT = TypeVar("CardT")


def card_from_json(cls: type[CardT], text: str, source: str, expected_format: str, kind: str) -> CardT:
    """Parse a card dataclass (with a `Preprocessing` field) and check its format, naming the file on error."""
    try:
        data = json.loads(text)
        data["preprocessing"] = Preprocessing(**data["preprocessing"])
        card = cls(**data)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{source} is not a dinotune {kind} ({err}).") from None
    if card.format != expected_format:  # type: ignore[attr-defined]
        raise CheckpointError(f"{source} has format '{card.format}'; this dinotune reads '{expected_format}'.")  # type: ignore[attr-defined]
    return card


class Classifier(nn.Module):
    """Image -> logits. `forward_features` / `forward_head` split as in timm, so heads can be swapped."""

    def __init__(self, backbone: Backbone, head: LinearHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.kinds = parse_feature_choice(head.feature_choice)

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        return compute_features(self.backbone, images, self.kinds)

    def forward_head(self, features: dict[str, Tensor]) -> Tensor:
        return self.head(build_input(features, self.head.feature_choice))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    @torch.no_grad()
    def predict_proba(self, images: Tensor) -> Tensor:
        logits = self(images)
        return torch.sigmoid(logits) if self.head.multilabel else logits.softmax(dim=1)


def save_model(folder: str | Path, model: Classifier, card: ModelCard, save_backbone: bool = False) -> Path:
    """Write model.json + head (+ backbone/ when its weights are not those of its source)."""
    from dinotune.atomic import atomic_dir, atomic_path, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "head.safetensors") as tmp:
        model.head.save(tmp)
    card.head = {"type": "linear", "file": "head.safetensors", "feature_choice": model.head.feature_choice}
    if save_backbone:
        with atomic_dir(folder / "backbone", overwrite=True) as tmp:
            model.backbone.hf.save_pretrained(tmp)
        card.backbone["weights_dir"] = "backbone"
    write_text(folder / "model.json", card.to_json())
    return folder


def read_card(folder: str | Path) -> ModelCard:
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise CheckpointError(f"'{folder}' is not a dinotune model folder: it has no model.json.")
    return ModelCard.from_json(path.read_text(), str(path))


def load_card_backbone(folder: Path, spec: dict[str, Any]) -> Backbone:
    """The backbone a card names: saved weights beside it, or its source (warning if that changed since)."""
    weights_dir = spec.get("weights_dir")
    source = str(folder / weights_dir) if weights_dir else spec["source"]
    backbone = load_backbone(source, in_chans=spec.get("in_chans", 3), device="cpu", seed=spec.get("seed", 0))
    if not weights_dir and spec.get("identity") and backbone.info.identity != spec["identity"]:
        log.warning("backbone %s changed since this model was trained (identity %s, now %s)",
                    source, spec["identity"], backbone.info.identity)
    return backbone


def load_model(folder: str | Path, device: str | torch.device | None = None) -> tuple[Classifier, ModelCard]:
    """The model of a run or model folder, in eval mode, and its card."""
    folder = Path(folder)
    card = read_card(folder)
    backbone = load_card_backbone(folder, card.backbone)
    head = LinearHead.load(folder / card.head.get("file", "head.safetensors"))
    model = Classifier(backbone, head)
    from dinotune.device import resolve_device

    return model.to(resolve_device(device)).eval(), card
