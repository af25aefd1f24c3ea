import math

import pytest
import torch

from dinotune.losses import koleo_loss


def test_known_points():
    # unit vectors at 0, 90 and 180 degrees: every nearest neighbour is at distance sqrt(2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert koleo_loss(x).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)


def test_scale_invariant_and_hand_computed():
    # angles 0, 30, 180 degrees (features are L2-normalised first, so the scale is irrelevant)
    angles = torch.tensor([0.0, math.pi / 6, math.pi])
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[2.0], [5.0], [0.5]])
    chord = lambda a: 2 * math.sin(a / 2)  # noqa: E731
    d = [chord(math.pi / 6), chord(math.pi / 6), chord(5 * math.pi / 6)]
    expected = -sum(math.log(v) for v in d) / 3
    assert koleo_loss(x).item() == pytest.approx(expected, abs=1e-5)


def test_gradient_spreads_points():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.14], [-1.0, 0.0]], requires_grad=True)
    before = koleo_loss(x)
    before.backward()
    with torch.no_grad():
        after = koleo_loss(x - 0.05 * x.grad)
    assert after < before


def test_needs_two_samples():
    with pytest.raises(ValueError):
        koleo_loss(torch.randn(1, 4))
