"""The detection head's shapes and initialisation, on tiny random backbones (a ViT and a ConvNeXt)."""

from __future__ import annotations

import warnings

import pytest
import torch

from dinotune.backbones import load_backbone
from dinotune.heads.detect import PRIOR, DetectHeadConfig, decode_boxes, locations
from dinotune.model.detector import build_detector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _backbone(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(f"random:{name}", device="cpu")


@pytest.mark.parametrize("arch", ["vit_test16", "convnext_test"])
def test_pyramid_levels_have_their_strides(arch: str) -> None:
    strides = [4, 8, 16, 32, 64]
    detector = build_detector(_backbone(arch), DetectHeadConfig(strides=strides, width=16), 3).eval()
    with torch.no_grad():
        levels = detector.head.pyramid(detector.features(torch.randn(1, 3, 128, 128)))
    assert [tuple(level.shape[-2:]) for level in levels] == [(128 // s, 128 // s) for s in strides]
    assert all(level.shape[1] == 16 for level in levels)
    assert detector.input_multiple == 64
    if arch == "vit_test16":  # ViTDet: the one map of the last block
        assert detector.layers == [detector.backbone.n_blocks - 1]


def test_outputs_flattened_with_the_focal_prior() -> None:
    detector = build_detector(_backbone("vit_test16"), DetectHeadConfig(strides=[4, 8, 16], width=16), 5).eval()
    with torch.no_grad():
        (logits, distances, centerness), points = detector(torch.randn(2, 3, 64, 64))
    count = 16 * 16 + 8 * 8 + 4 * 4
    assert logits.shape == (2, count, 5) and distances.shape == (2, count, 4) and centerness.shape == (2, count)
    assert points.shape == (count, 3) and (distances > 0).all()
    assert torch.sigmoid(logits).mean().item() == pytest.approx(PRIOR, rel=0.2)  # the background prior
    assert points[0].tolist() == [2, 2, 4] and points[16 * 16].tolist() == [4, 4, 8]  # first centre of each level


def test_locations_and_decoding() -> None:
    points = locations([(2, 2)], [8])
    assert points.tolist() == [[4, 4, 8], [12, 4, 8], [4, 12, 8], [12, 12, 8]]
    boxes = decode_boxes(points, torch.tensor([[1.0, 2, 3, 4]]).expand(4, 4))
    assert boxes[1].tolist() == [11, 2, 15, 8]
