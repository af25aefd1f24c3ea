"""Building a `MaskSegmenter`: the head's classes, class aggregation, official weights, trainable parts.

The card stores what rebuilds the head without the original files: `head_classes` (names of the
head's own classes) and `aggregate` ({user class: [head classes]} or None); the weights are in
head.safetensors under dinotune's names (`dinotune.heads.mask2former.official` maps them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from dinotune.backbones import Backbone
from dinotune.errors import ConfigError
from dinotune.heads.mask2former import (
    Mask2FormerConfig,
    Mask2FormerHead,
    four_even_intervals,
    head_class_count,
    load_head_strict,
    read_official,
    split_official,
)
from dinotune.heads.mask2former.aggregate import aggregation_matrix, read_class_names, read_mapping
from dinotune.model.segmenter import MaskSegmenter


def resolve_classes(
    cfg: Mask2FormerConfig, classes: list[str]
) -> tuple[list[str], dict[str, list[Any]] | None, dict[str, Tensor] | None]:
    """(head class names, aggregation mapping or None, official head weights or None) for a config."""
    head_sd = None
    if cfg.weights is not None:
        _, head_sd = split_official(read_official(cfg.weights), str(cfg.weights))
    count = head_class_count(head_sd, str(cfg.weights)) if head_sd is not None else None
    given = cfg.head_classes
    names = read_class_names(given) if isinstance(given, Path) else list(given) if given else None
    if names is None:
        names = classes if count in (None, len(classes)) else [f"head_class_{i}" for i in range(count or 0)]
    if count is not None and len(names) != count:
        raise ConfigError(f"head.m2f.head_classes lists {len(names)} names but {cfg.weights} has {count} classes.")
    mapping = read_mapping(cfg.aggregate) if cfg.aggregate is not None else None
    if mapping is None and len(names) != len(classes):
        raise ConfigError(
            f"the m2f head has {len(names)} classes but the data has {len(classes)}; set head.m2f.aggregate "
            "to a file mapping each data class to head classes."
        )
    if mapping is not None and sorted(mapping) != sorted(classes):
        raise ConfigError(
            f"head.m2f.aggregate ({cfg.aggregate}) names the classes {sorted(mapping)}, but the data's are "
            f"{sorted(classes)}; use the data's class names as keys."
        )
    if mapping is not None:
        mapping = {c: mapping[c] for c in classes}  # rows in the data's class order
    return names, mapping, head_sd


def build_mask_segmenter(
    backbone: Backbone,
    cfg: Mask2FormerConfig,
    classes: list[str],
    head_classes: list[str],
    mapping: dict[str, list[Any]] | None = None,
    head_sd: dict[str, Tensor] | None = None,
) -> MaskSegmenter:
    """Backbone + Mask2Former head over the official FOUR_EVEN_INTERVALS blocks, weights loaded strictly."""
    if backbone.info.family != "vit":
        raise ConfigError(
            f"head.type=m2f needs a ViT backbone (the DINOv3 adapter reads patch tokens); got a {backbone.info.family}."
        )
    matrix = aggregation_matrix(mapping, head_classes, str(cfg.aggregate)) if mapping is not None else None
    head = Mask2FormerHead(backbone.embed_dim, len(head_classes), cfg, backbone.info.in_chans, matrix)
    if head_sd is not None:
        load_head_strict(head, head_sd, str(cfg.weights))
    if head.num_classes != len(classes):
        raise ConfigError(f"the m2f head gives {head.num_classes} classes but the data has {len(classes)}.")
    return MaskSegmenter(backbone, head, four_even_intervals(backbone.n_blocks))


def set_trainable_parts(head: Mask2FormerHead, prefixes: list[str]) -> int:
    """Only parameters whose names start with one of `prefixes` train (`''`: all); returns their count."""
    names = [name for name, _ in head.named_parameters()]
    unknown = [p for p in prefixes if p and not any(n.startswith(p) for n in names)]
    if unknown:
        raise ConfigError(
            f"head.m2f.trainable: {unknown} match no head parameter (e.g. predictor.class_embed, predictor, "
            "pixel_decoder, adapter)."
        )
    count = 0
    for name, param in head.named_parameters():
        param.requires_grad_(any(name.startswith(p) for p in prefixes))
        count += param.numel() if param.requires_grad else 0
    return count


def card_fields(model: MaskSegmenter, head_classes: list[str], mapping: dict[str, list[Any]] | None) -> dict[str, Any]:
    """What the card's head section needs beyond type/config/layers to rebuild this head."""
    return {"head_classes": list(head_classes), "aggregate": mapping, "input_multiple": model.input_multiple}


__all__ = ["build_mask_segmenter", "card_fields", "resolve_classes", "set_trainable_parts"]
