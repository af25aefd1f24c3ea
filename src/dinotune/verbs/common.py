"""What every verb shares: the result shape, the backbone a config names, the checks stated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dinotune.backbones import Backbone, load_backbone
from dinotune.config import BackboneConfig
from dinotune.data.config import DataConfig
from dinotune.data.preprocessing import Preprocessing
from dinotune.errors import ConfigError, DataError


@dataclass
class Result:
    """What every verb returns: where it wrote, and its headline figures (what metrics.json holds)."""

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def resolve_channels(data: DataConfig, backbone: BackboneConfig) -> int:
    """The input channel count, stated once: `data.channels` or `backbone.in_chans` (3 when neither)."""
    if data.channels is not None and backbone.in_chans is not None and data.channels != backbone.in_chans:
        raise ConfigError(
            f"data.channels={data.channels} but backbone.in_chans={backbone.in_chans}; set one of "
            "them (the other follows)."
        )
    return data.channels or backbone.in_chans or 3


def load_training_backbone(backbone_cfg: BackboneConfig, data_cfg: DataConfig, seed: int) -> Backbone:
    """The backbone a training config names, on the CPU (Lightning moves it), with the data's channels.

    The global RNG is seeded first, so everything built after it (heads included) is reproducible.
    """
    torch.manual_seed(seed)
    channels = resolve_channels(data_cfg, backbone_cfg)
    return load_backbone(backbone_cfg.source, arch=backbone_cfg.arch, in_chans=channels, device="cpu", seed=seed)


def check_image_size(image_size: int, backbone: Backbone) -> None:
    """One rule for every verb: image sizes are multiples of the backbone's patch (or stride), never rounded."""
    multiple = backbone.input_multiple
    if image_size % multiple:
        lo = max(multiple, image_size // multiple * multiple)
        raise ConfigError(
            f"data.image_size={image_size} is not a multiple of {multiple} (this backbone's patch "
            f"size); use {lo} or {lo + multiple}."
        )


def preprocessing_for(data: DataConfig, backbone: Backbone, *, batched: bool = True) -> Preprocessing:
    """The card's preprocessing for `data` on `backbone` (mean/std default to the backbone's)."""
    if batched and data.resize == "keep":
        raise DataError("data.resize=keep gives images of different sizes; training batches need crop or pad.")
    check_image_size(data.image_size, backbone)
    channels = backbone.info.in_chans
    scaling = data.scaling.model_dump(exclude_none=True)
    return Preprocessing(
        image_size=data.image_size,
        resize=data.resize,
        channels=channels,
        mean=tuple(data.mean or backbone.info.mean),
        std=tuple(data.std or backbone.info.std),
        scaling=scaling if data.scaling.mode != "fixed" or data.scaling.divisor else {},
    )


def with_channels(data: DataConfig, backbone: Backbone) -> DataConfig:
    """`data` with its channel count filled in from the backbone (the data layer needs it explicit)."""
    return data.model_copy(update={"channels": backbone.info.in_chans})


def backbone_source(backbone: Backbone, seed: int) -> dict[str, Any]:
    """The card's `backbone` section: how to load this backbone again (a local path made absolute, so the
    model loads from any working directory)."""
    source = backbone.info.source
    if not source.startswith("random:") and Path(source).exists():
        source = str(Path(source).resolve())
    return {
        "source": source,
        "arch": backbone.info.arch,
        "in_chans": backbone.info.in_chans,
        "seed": seed,
        "identity": backbone.info.identity,
    }
