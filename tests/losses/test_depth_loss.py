"""SILog and the gradient loss: the official formula, masking, scale behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from dinotune.losses.depth import EPS, DepthLoss, DepthLossConfig, gradient_loss, silog_loss


def test_silog_is_the_official_formula_on_valid_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 8, 8, generator=gen) * 5 + 0.5
    pred = torch.rand(2, 8, 8, generator=gen) * 5 + 0.5
    valid = torch.rand(2, 8, 8, generator=gen) > 0.3
    g = torch.log(pred[valid] + EPS) - torch.log(target[valid] + EPS)
    official = math.sqrt(float(g.var(unbiased=False) + 0.15 * g.mean() ** 2))  # Var + 0.15 mean^2
    assert float(silog_loss(pred, target, valid)) == pytest.approx(official, rel=1e-5)
    changed = pred.clone()
    changed[~valid] = 1000.0  # invalid pixels do not count
    assert float(silog_loss(changed, target, valid)) == pytest.approx(official, rel=1e-6)


def test_silog_forgives_most_of_a_global_scale_error() -> None:
    target = torch.linspace(1, 5, 64).reshape(1, 8, 8)
    valid = torch.ones_like(target, dtype=torch.bool)
    scaled = silog_loss(target * 2, target, valid, lam=1.0)
    assert float(scaled) < 1e-3  # lambda 1: fully scale invariant (up to EPS)
    assert float(silog_loss(target * 2, target, valid)) == pytest.approx(math.sqrt(0.15) * math.log(2), rel=1e-2)


def test_no_valid_pixel_gives_zero_with_a_graph() -> None:
    pred = torch.ones(1, 4, 4, requires_grad=True)
    loss = DepthLoss(DepthLossConfig(gradient_weight=0.5))(pred, torch.zeros(1, 4, 4), torch.zeros(1, 4, 4) > 0)
    loss.backward()
    assert float(loss) == 0.0 and pred.grad is not None


def test_gradient_loss_sees_edges_not_offsets() -> None:
    target = torch.ones(1, 1, 16, 16) * 2
    target[..., 8:] = 4
    valid = torch.ones_like(target, dtype=torch.bool)
    assert float(gradient_loss(target * 1.5, target, valid)) < 1e-3  # a constant log offset: no gradient (up to EPS)
    assert float(gradient_loss(torch.full_like(target, 3.0), target, valid)) > 0.1  # a missing edge does
