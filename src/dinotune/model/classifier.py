"""`Classifier`: backbone + linear head in plain PyTorch (no Lightning), what every verb runs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dinotune.backbones import Backbone
from dinotune.features.extract import compute_features
from dinotune.heads.linear import LinearHead, build_input, parse_feature_choice


class Classifier(nn.Module):
    """Image -> logits. `forward_features` / `forward_head` split as in timm, so heads can be swapped."""

    def __init__(self, backbone: Backbone, head: LinearHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.kinds = parse_feature_choice(head.feature_choice)

    @property
    def input_multiple(self) -> int:
        return self.backbone.input_multiple

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        return compute_features(self.backbone, images, self.kinds)

    def forward_head(self, features: dict[str, Tensor]) -> Tensor:
        return self.head(build_input(features, self.head.feature_choice))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    def logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the head's input (the pooled features), from one backbone pass."""
        features = self.forward_features(images)
        return self.forward_head(features), build_input(features, self.head.feature_choice)

    def logits_and_embedding(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the normed class token (what an export's `embedding` output holds)."""
        features = compute_features(self.backbone, images, tuple(dict.fromkeys(("cls", *self.kinds))))
        return self.forward_head(features), features["cls"]

    @torch.no_grad()
    def predict_proba(self, images: Tensor) -> Tensor:
        logits = self(images)
        return torch.sigmoid(logits) if self.head.multilabel else logits.softmax(dim=1)
