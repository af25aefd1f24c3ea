"""Linear classification heads and the feature choices they read.

A feature choice names the pooled backbone features a head concatenates (`cls`, `patch_mean`,
`cls_last4`, joined by '+'); the same strings name the feature cache's columns, so a head trained on
cached features runs unchanged on live images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dinotune.errors import ConfigError, DataError

DEFAULT_FEATURE_CHOICES: tuple[str, ...] = ("cls", "cls+patch_mean", "last4_cls+patch_mean")
_KIND_ALIASES = {"last4_cls": "cls_last4"}


def parse_feature_choice(choice: str) -> tuple[str, ...]:
    """'last4_cls+patch_mean' -> ('cls_last4', 'patch_mean'): the feature kinds concatenated in order."""
    parts = tuple(_KIND_ALIASES.get(p.strip(), p.strip()) for p in choice.split("+"))
    if not choice or any(not p for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(
            f"Feature choice {choice!r} is malformed: use feature kinds joined by '+', each once, "
            f"e.g. {', '.join(DEFAULT_FEATURE_CHOICES)}."
        )
    return parts


def available_feature_choices(features: Mapping[str, Tensor]) -> list[str]:
    """The default feature choices whose inputs exist in `features`."""
    return [c for c in DEFAULT_FEATURE_CHOICES if all(k in features for k in parse_feature_choice(c))]


def build_input(features: Mapping[str, Tensor], choice: str) -> Tensor:
    """Concatenate the raw feature kinds of `choice` into the (N, D_in) input a `LinearHead` expects."""
    kinds = parse_feature_choice(choice)
    missing = [k for k in kinds if k not in features]
    if missing:
        raise DataError(
            f"Feature choice {choice!r} needs feature kinds {missing} that are not in the features "
            f"(available: {sorted(features)}); extract them or pick another choice."
        )
    return torch.cat([features[k].float() for k in kinds], dim=1)


class LinearHead(nn.Module):
    """Standardise then linear: the deployable form of a sweep's best head."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        mean: Tensor,
        std: Tensor,
        *,
        feature_choice: str = "cls",
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        num_classes, in_dim = weight.shape
        if bias.shape != (num_classes,) or mean.shape != (in_dim,) or std.shape != (in_dim,):
            raise DataError(
                f"LinearHead tensors disagree: weight {tuple(weight.shape)}, bias {tuple(bias.shape)}, "
                f"mean {tuple(mean.shape)}, std {tuple(std.shape)}; expected (C, D), (C,), (D,), (D,)."
            )
        self.feature_choice = feature_choice
        self.multilabel = multilabel
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())
        self.linear = nn.Linear(in_dim, num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, C) from raw concatenated features (N, D) (see `build_input`)."""
        return self.linear((x.float() - self.mean) / self.std)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Softmax (single-label) or per-label sigmoid (multi-label) probabilities."""
        logits = self(x)
        return torch.sigmoid(logits) if self.multilabel else logits.softmax(dim=1)

    def save(self, path: str | Path) -> None:
        """Write weights and stats as safetensors; feature choice and task go in the metadata."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"feature_choice": self.feature_choice, "multilabel": json.dumps(self.multilabel)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> LinearHead:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"Linear head file {path} does not exist.")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        try:
            return cls(
                t["linear.weight"],
                t["linear.bias"],
                t["mean"],
                t["std"],
                feature_choice=meta.get("feature_choice", "cls"),
                multilabel=json.loads(meta.get("multilabel", "false")),
            )
        except KeyError as e:
            raise DataError(f"{path} is not a dinotune linear head: tensor {e} is missing.") from None


def new_linear_head(
    widths: Mapping[str, int], num_classes: int, feature_choice: str, multilabel: bool, seed: int
) -> LinearHead:
    """A fresh head without standardisation (mean 0, std 1), for heads trained with their backbone."""
    dim = sum(widths[k] for k in parse_feature_choice(feature_choice))
    weight = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed)) * 0.01
    return LinearHead(
        weight,
        torch.zeros(num_classes),
        torch.zeros(dim),
        torch.ones(dim),
        feature_choice=feature_choice,
        multilabel=multilabel,
    )
