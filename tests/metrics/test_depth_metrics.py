"""Depth metrics against a case computed by hand and against the numpy formulas (Eigen et al.), per image
then averaged over images, invalid pixels left out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinotune.metrics.depth import NAMES, DepthMeter, image_metrics


def numpy_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The textbook formulas (as in the NYU/KITTI evaluation scripts), on valid pixels only."""
    thresh = np.maximum(gt / pred, pred / gt)
    return {
        "absrel": np.mean(np.abs(gt - pred) / gt),
        "sqrel": np.mean((gt - pred) ** 2 / gt),
        "rmse": np.sqrt(np.mean((gt - pred) ** 2)),
        "rmse_log": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
        "log10": np.mean(np.abs(np.log10(gt) - np.log10(pred))),
        "delta1": np.mean(thresh < 1.25),
        "delta2": np.mean(thresh < 1.25**2),
        "delta3": np.mean(thresh < 1.25**3),
    }


def test_hand_computed_case() -> None:
    # gt [1, 2, 4, (invalid)], pred [1, 2.5, 2, 9]: errors 0, 0.5, -2 on the 3 valid pixels
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])
    pred = torch.tensor([[1.0, 2.5], [2.0, 9.0]])
    values = dict(zip(NAMES, image_metrics(pred, gt, gt > 0, 0.001, 10.0).tolist(), strict=True))
    ln = np.log
    expected = {
        "absrel": (0 + 0.25 + 0.5) / 3,
        "sqrel": (0 + 0.125 + 1.0) / 3,
        "rmse": np.sqrt((0 + 0.25 + 4) / 3),
        "rmse_log": np.sqrt((0 + ln(1.25) ** 2 + ln(2) ** 2) / 3),
        "log10": (0 + np.log10(1.25) + np.log10(2)) / 3,
        "delta1": 1 / 3,  # ratios 1, 1.25 (not < 1.25), 2
        "delta2": 2 / 3,
        "delta3": 2 / 3,  # 2 > 1.953125
    }
    for name in NAMES:
        assert values[name] == pytest.approx(expected[name], abs=1e-6), name


def test_dataset_mean_is_per_image_and_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    meter = DepthMeter(0.001, 10.0)
    per_image = []
    for size in (8, 32, 5):  # images of different sizes weigh the same
        gt = rng.uniform(0.5, 9.5, (size, size))
        pred = gt * rng.uniform(0.7, 1.4, (size, size))
        gt[0, 0] = 0.0  # a hole
        valid = gt > 0
        meter.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None], torch.from_numpy(valid)[None])
        per_image.append(numpy_metrics(np.clip(pred[valid], 0.001, 10.0), gt[valid]))
    meter.update(torch.ones(1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))  # no valid pixel
    result = meter.compute()
    assert result["images"] == 3 and result["images_skipped"] == 1
    for name in NAMES:
        assert result[name] == pytest.approx(np.mean([m[name] for m in per_image]), abs=1e-6), name


def test_predictions_are_clamped_to_the_range() -> None:
    gt = torch.tensor([2.0, 4.0])
    far = image_metrics(torch.tensor([50.0, 4.0]), gt, gt > 0, 0.001, 10.0)
    assert far is not None and float(far[0]) == pytest.approx((8 / 2 + 0) / 2)  # 50 clamped to 10
