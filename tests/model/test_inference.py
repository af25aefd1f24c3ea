"""Sliding-window inference: equal to whole-image inference where a window covers the image; exact on
any size for a position-wise model; TTA averaging; window layout."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from dinotune.backbones import load_backbone
from dinotune.heads.segment import HeadConfig
from dinotune.model.inference import InferenceConfig, predict_probs, sliding_window, window_starts
from dinotune.model.segmenter import build_segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin


@pytest.fixture(scope="module")
def segmenter() -> nn.Module:
    torch.manual_seed(0)
    model = build_segmenter(load_backbone("random:vit_test16", device="cpu"), HeadConfig(type="linear"), 5)
    nn.init.normal_(model.head.classifier.weight, std=1.0)
    return model.eval()


@pytest.mark.parametrize(
    ("size", "crop", "stride", "expected"),
    [
        (100, 32, 20, [0, 20, 40, 60, 68]),  # last window shifted to end at the border
        (96, 32, 32, [0, 32, 64]),  # exact tiling
        (20, 32, 20, [0]),  # smaller than the crop: one window
        (33, 32, 30, [0, 1]),
    ],
)
def test_window_starts(size: int, crop: int, stride: int, expected: list[int]) -> None:
    starts = window_starts(size, crop, stride)
    assert starts == expected
    assert starts[-1] + min(crop, size) == size  # the border is reached
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))  # no gaps


def test_window_covering_image_equals_whole_image(segmenter: nn.Module) -> None:
    image = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        whole = segmenter(image)
    slide = sliding_window(segmenter, image, 5, crop=128, stride=85)
    assert slide.shape == (2, 5, 80, 112)
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)
    probs = predict_probs(segmenter, image, 5, InferenceConfig(crop=512, stride=341))
    torch.testing.assert_close(probs, whole.softmax(1), atol=1e-5, rtol=1e-5)


class PixelModel(nn.Module):
    """Position-wise (1x1 conv): any window layout must reproduce the whole-image output exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.conv(x)


@pytest.mark.parametrize(("h", "w", "crop", "stride"), [(100, 77, 32, 21), (250, 130, 64, 40), (31, 200, 48, 16)])
def test_sliding_window_exact_on_sizes_not_multiple_of_stride(h: int, w: int, crop: int, stride: int) -> None:
    model = PixelModel()
    image = torch.randn(1, 3, h, w)
    out = sliding_window(model, image, 4, crop=crop, stride=stride, window_batch=3)
    torch.testing.assert_close(out, model.conv(image), atol=1e-5, rtol=1e-5)
    # memory is bounded by the window: never more than window_batch crops of at most crop x crop pixels
    assert all(c[0] <= 3 and c[2] <= crop and c[3] <= crop for c in model.calls)
    assert len(model.calls) > 1


def test_real_model_on_large_image_not_multiple_of_stride(segmenter: nn.Module) -> None:
    image = torch.randn(1, 3, 150, 97)  # not a multiple of the patch (16) nor of the stride
    out = sliding_window(segmenter, image, 5, crop=64, stride=40)
    assert out.shape == (1, 5, 150, 97) and torch.isfinite(out).all()
    # the top-left window alone is what the model gives on that crop, away from other windows' overlap
    with torch.no_grad():
        corner = segmenter(image[..., :64, :64])
    y2, x2 = window_starts(150, 64, 40)[1], window_starts(97, 64, 40)[1]  # 40 and 33 (last window shifted)
    assert x2 == 33
    torch.testing.assert_close(out[..., :y2, :x2], corner[..., :y2, :x2], atol=1e-5, rtol=1e-5)
    # where two windows overlap, the result is their mean
    with torch.no_grad():
        right = segmenter(image[..., :64, x2 : x2 + 64])
    torch.testing.assert_close(
        out[..., :y2, x2:64], (corner[..., :y2, x2:] + right[..., :y2, : 64 - x2]) / 2, atol=1e-5, rtol=1e-5
    )


def test_flip_and_multiscale_tta() -> None:
    model = PixelModel()
    image = torch.randn(1, 3, 40, 56)
    plain = predict_probs(model, image, 4, InferenceConfig(mode="whole"))
    # a position-wise model is flip-equivariant: flip TTA gives the same probabilities
    flipped = predict_probs(model, image, 4, InferenceConfig(mode="whole", flip=True))
    torch.testing.assert_close(flipped, plain, atol=1e-6, rtol=1e-6)
    multi = predict_probs(model, image, 4, InferenceConfig(crop=32, stride=20, scales=[0.5, 1.0, 1.5], flip=True))
    assert multi.shape == (1, 4, 40, 56)
    torch.testing.assert_close(multi.sum(1), torch.ones(1, 40, 56))
    assert len(model.calls) > 6  # 3 scales x 2 flips, several windows each
    with pytest.raises(ValueError, match="stride"):
        sliding_window(model, image, 4, crop=16, stride=32)
