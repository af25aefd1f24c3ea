"""The numpy eval transforms (what torch-free serving runs) equal the albumentations/OpenCV pipeline that
training, predict and evaluate run, and F.interpolate's bilinear (half-pixel, no antialias), to 1e-5."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinotune.data.numpy_transforms import EvalTransform, FullSizeTransform, resize, resolve_norm
from dinotune.data.preprocessing import Preprocessing
from dinotune.data.transforms import FullSize, build_transform

SIZES = [(40, 50, 32, 40), (40, 50, 100, 77), (17, 23, 5, 9), (64, 64, 32, 32), (7, 300, 16, 16), (3, 3, 20, 2)]


@pytest.mark.parametrize(("h", "w", "th", "tw"), SIZES)
def test_linear_resize_is_opencv_and_torch_bilinear(h: int, w: int, th: int, tw: int) -> None:
    image = np.random.default_rng(h * w).random((h, w, 3), dtype=np.float32)
    ours = resize(image, th, tw)
    torch_out = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None], size=(th, tw), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(ours, torch_out[0].permute(1, 2, 0).numpy(), atol=1e-5)
    np.testing.assert_allclose(ours, cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR), atol=1e-6)
    area = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)  # shrinking, growing and mixed axes
    np.testing.assert_allclose(resize(image, th, tw, area=True), area, atol=1e-6)


@pytest.mark.parametrize("mode", ["crop", "pad", "keep"])
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_eval_transform_equals_the_training_pipeline(mode: str, channels: int) -> None:
    rng = np.random.default_rng(channels)
    mean, std = [0.4, 0.5, 0.6][:channels], [0.2, 0.3, 0.25][:channels]
    if channels == 5:
        mean, std = [0.3] * 5, [0.2] * 5
    prep = Preprocessing(image_size=32, resize=mode, channels=channels, mean=tuple(mean), std=tuple(std))
    ours = EvalTransform.from_preprocessing(prep, 16)
    reference = prep.transform(16)
    for h, w in [(40, 50), (50, 40), (100, 37), (20, 10), (10, 200), (33, 33), (301, 300), (32, 32)]:
        image = rng.random((h, w, channels), dtype=np.float32)
        expected = reference(image)["image"].numpy()
        got = ours(image)
        assert got.shape == expected.shape and got.dtype == np.float32, (h, w)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{mode} {h}x{w}x{channels}")


def test_full_size_and_norm_rules_match() -> None:
    image = np.random.default_rng(0).random((21, 13, 3), dtype=np.float32)
    np.testing.assert_array_equal(
        FullSizeTransform([0.1] * 3, [0.5] * 3)(image), FullSize([0.1] * 3, [0.5] * 3)(image)["image"].numpy()
    )
    mean, std = resolve_norm([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1)  # RGB statistics for a gray model
    assert mean.shape == std.shape == (1,) and abs(float(mean[0]) - 0.449) < 1e-6
    transform = build_transform(
        train=False, image_size=32, channels=1, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    )
    np.testing.assert_array_equal(transform.mean, mean)
