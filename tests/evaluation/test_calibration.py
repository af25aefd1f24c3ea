"""ECE against hand-computed values; temperature scaling against a known miscalibration."""

from __future__ import annotations

import numpy as np
import pytest

from dinotune.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability,
    softmax,
)


def test_ece_four_samples_each_in_its_own_bin() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1])  # right (0.9), wrong (0.8), right (0.7), wrong (0.6)
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.6)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_ece_samples_sharing_a_bin_are_averaged_first() -> None:
    # 0.91 and 0.92 share the bin (13/15, 14/15]; one right, one wrong: |0.5 - 0.915|
    probs = np.array([[0.91, 0.09], [0.92, 0.08], [0.55, 0.45], [0.2, 0.8]])
    labels = np.array([0, 1, 0, 1])
    expected = 2 / 4 * abs(0.5 - 0.915) + 1 / 4 * abs(1 - 0.55) + 1 / 4 * abs(1 - 0.8)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_ece_matches_a_plain_loop_over_15_bins() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)) * 3
    probs, labels = softmax(logits), rng.integers(0, 4, 500)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    rel = reliability(probs, labels)
    assert rel.ece == pytest.approx(ece)
    assert rel.counts.sum() == 500 and len(rel.edges) == 16


def _miscalibrated(scale: float, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the model reports scale * z (scale > 1: overconfident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5)) * 1.5
    p = softmax(z)
    labels = np.array([rng.choice(5, p=row) for row in p])
    return z * scale, labels


@pytest.mark.parametrize("scale", [3.0, 0.4])
def test_temperature_scaling_recovers_the_scale_and_lowers_nll(scale: float) -> None:
    val_logits, val_labels = _miscalibrated(scale, seed=1)
    test_logits, test_labels = _miscalibrated(scale, seed=2)
    t = fit_temperature(val_logits, val_labels)
    assert t == pytest.approx(scale, rel=0.15)
    before = negative_log_likelihood(test_logits, test_labels)
    after = negative_log_likelihood(test_logits, test_labels, t)
    assert after < before - 0.01
    assert expected_calibration_error(softmax(test_logits, t), test_labels) < expected_calibration_error(
        softmax(test_logits), test_labels
    )


def test_temperature_stays_bounded_on_separable_data() -> None:
    logits = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    labels = np.array([0, 1] * 10)
    assert 0.05 <= fit_temperature(logits, labels) < 1.0  # sharpened, but not to T -> 0
