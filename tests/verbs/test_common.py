"""Facts stated once: the channel count, the image-size rule, the backbone a training config names."""

from __future__ import annotations

import pytest

from dinotune.backbones import load_backbone
from dinotune.config import BackboneConfig
from dinotune.data.config import DataConfig
from dinotune.errors import ConfigError
from dinotune.verbs.common import check_image_size, load_training_backbone, preprocessing_for, resolve_channels


def test_channels_come_from_either_side_and_default_to_rgb() -> None:
    assert resolve_channels(DataConfig(root="x"), BackboneConfig()) == 3
    assert resolve_channels(DataConfig(root="x", channels=1), BackboneConfig()) == 1
    assert resolve_channels(DataConfig(root="x"), BackboneConfig(in_chans=6)) == 6
    assert resolve_channels(DataConfig(root="x", channels=6), BackboneConfig(in_chans=6)) == 6
    with pytest.raises(ConfigError, match=r"data.channels=1 but backbone.in_chans=3; set one of them"):
        resolve_channels(DataConfig(root="x", channels=1), BackboneConfig(in_chans=3))


def test_the_training_backbone_takes_the_data_channels() -> None:
    backbone = load_training_backbone(BackboneConfig(source="random:vit_test16"), DataConfig(root="x", channels=1), 0)
    assert backbone.info.in_chans == 1
    assert preprocessing_for(DataConfig(root="x", image_size=32), backbone).channels == 1


@pytest.mark.parametrize(
    ("source", "size", "message"),
    [
        (
            "random:vit_test16",
            200,
            r"data.image_size=200 is not a multiple of 16 \(this backbone's patch size\); "
            r"use 192 or 208",
        ),
        ("random:convnext_test", 48, r"data.image_size=48 is not a multiple of 32 .*; use 32 or 64"),
    ],
)
def test_image_size_is_refused_never_rounded(source: str, size: int, message: str) -> None:
    backbone = load_backbone(source, device="cpu")
    with pytest.raises(ConfigError, match=message):
        check_image_size(size, backbone)
    check_image_size(2 * backbone.input_multiple, backbone)
