"""Depth heads: bins, the official layout (CLS concatenated, 256 bins), DPT on ViT and ConvNeXt pyramids."""

from __future__ import annotations

import pytest
import torch

from dinotune import load_backbone
from dinotune.heads.depth import BinOutput, DepthHeadConfig, dpt_layers
from dinotune.model.depther import build_depth_model


def test_bins_and_output_range() -> None:
    linear, log = BinOutput(4, 1.0, 8.0, "linear", "linear"), BinOutput(4, 1.0, 8.0, "log", "softmax")
    assert linear.centres.flatten().tolist() == pytest.approx([1.0, 1 + 7 / 3, 1 + 14 / 3, 8.0])
    assert log.centres.flatten().tolist() == pytest.approx([1.0, 2.0, 4.0, 8.0])
    scores = torch.randn(2, 4, 3, 3) * 10
    for head in (linear, log):
        depth = head(scores)
        assert depth.shape == (2, 1, 3, 3) and float(depth.min()) >= 1.0 and float(depth.max()) <= 8.0
    one_hot = torch.tensor([0.0, 0.0, 0.0, 100.0]).view(1, 4, 1, 1)
    assert float(log(one_hot)) == pytest.approx(8.0)  # softmax on one large score: that bin's centre


def test_dpt_layers_are_four_even_intervals() -> None:
    assert dpt_layers(12) == [2, 5, 8, 11] and dpt_layers(24) == [5, 11, 17, 23] and dpt_layers(2) == [0, 1, 1, 1]


@pytest.mark.parametrize("arch", ["vit_test16", "convnext_test"])
@pytest.mark.parametrize("kind", ["linear", "dpt"])
def test_models_give_depth_at_the_input_size(arch: str, kind: str) -> None:
    torch.manual_seed(0)
    backbone = load_backbone(f"random:{arch}", device="cpu")
    model = build_depth_model(backbone, DepthHeadConfig(type=kind, bins=16, width=16), 0.5, 20.0).eval()
    with torch.no_grad():
        depth = model(torch.randn(2, 3, 64, 80))  # not square; 80 = 5 patches
        odd = model(torch.randn(1, 3, 50, 70))  # padded to the multiple, cropped back
    assert depth.shape == (2, 1, 64, 80) and odd.shape == (1, 1, 50, 70)
    assert float(depth.min()) >= 0.5 and float(depth.max()) <= 20.0


def test_linear_head_is_the_official_layout() -> None:
    backbone = load_backbone("random:vit_test16", device="cpu")
    model = build_depth_model(backbone, DepthHeadConfig(), 0.001, 10.0)
    # 2 blocks (last4 of a 2-block ViT), each [patch, CLS] -> 2 * 2 * 64 channels, 256 bins
    assert model.layers == [0, 1] and model.head.conv_depth.in_channels == 256
    assert model.head.conv_depth.out_channels == 256
