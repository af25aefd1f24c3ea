import pytest
import torch

from dinotune.losses import gram_loss


def test_zero_for_identical_features_and_scale():
    x = torch.randn(2, 5, 8)
    assert gram_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert gram_loss(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)  # per-patch normalised


def test_hand_computed():
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # G = identity
    reference = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])  # H = all ones
    assert gram_loss(student, reference).item() == pytest.approx(0.5)  # (0 + 1 + 1 + 0) / 4
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # H = [[1, -1], [-1, 1]]
    assert gram_loss(student, opposite).item() == pytest.approx(0.5)
    assert gram_loss(student, opposite, remove_negatives=True).item() == pytest.approx(0.0)


def test_gradient_only_reaches_the_student():
    student, reference = torch.randn(1, 4, 3, requires_grad=True), torch.randn(1, 4, 3, requires_grad=True)
    gram_loss(student, reference).backward()
    assert student.grad is not None and reference.grad is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        gram_loss(torch.randn(1, 4, 3), torch.randn(1, 5, 3))
