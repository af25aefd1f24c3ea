"""The numpy letterbox (torch-free serving of detection exports) equals the eval `detection_transform`."""

from __future__ import annotations

import numpy as np
import pytest

from dinotune.data.detection_dataset import detection_transform
from dinotune.data.letterbox import LetterboxTransform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize(("height", "width", "channels"), [(100, 70, 3), (30, 50, 3), (64, 64, 3), (90, 41, 1)])
def test_letterbox_equals_the_eval_detection_transform(height: int, width: int, channels: int) -> None:
    image = np.random.default_rng(height).random((height, width, channels), dtype=np.float32)
    mean, std = (MEAN, STD) if channels == 3 else ((0.5,), (0.25,))
    expected = detection_transform(False, 64, mean, std, channels)(image, np.zeros((0, 4)), np.zeros(0))
    got, scale = LetterboxTransform(64, mean, std, channels)(image)
    assert got.shape == tuple(expected["image"].shape) == (channels, 64, 64)
    assert scale == pytest.approx(expected["scale"])
    assert np.abs(got - expected["image"].numpy()).max() < 1e-4
