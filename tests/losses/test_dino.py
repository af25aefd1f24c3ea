import math

import pytest
import torch
import torch.nn.functional as F

from dinotune.losses import DINOLoss, sinkhorn_knopp, teacher_temperature


def test_loss_of_a_distribution_with_itself_is_its_entropy():
    torch.manual_seed(0)
    logits = torch.randn(4, 7)
    probs = F.softmax(logits / 0.1, dim=-1)
    entropy = -(probs * probs.log()).sum(-1).mean()
    loss = DINOLoss(7, student_temp=0.1)(logits[None], probs[None], ignore_diagonal=False)
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-5)
    other = DINOLoss(7, student_temp=0.1)(torch.randn(1, 4, 7), probs[None], ignore_diagonal=False)
    assert other > loss  # cross-entropy never below the entropy


def test_pairs_skip_same_view_and_average():
    torch.manual_seed(1)
    student, teacher = torch.randn(3, 2, 5), F.softmax(torch.randn(2, 2, 5), dim=-1)
    loss = DINOLoss(5, student_temp=0.2)(student, teacher, ignore_diagonal=True)
    expected = []
    for i in range(3):
        for j in range(2):
            if i != j:
                ce = -(teacher[j] * F.log_softmax(student[i] / 0.2, dim=-1)).sum(-1).mean()
                expected.append(ce)
    assert len(expected) == 4
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_sinkhorn_marginals():
    torch.manual_seed(2)
    logits = torch.randn(12, 4) * 3
    q = sinkhorn_knopp(logits, temperature=0.5, n_iterations=1000)
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)  # each sample: a distribution
    assert torch.allclose(q.sum(dim=0), torch.full((4,), 12 / 4), atol=1e-3)  # prototypes used equally
    assert (q >= 0).all()


def test_sinkhorn_is_stable_for_large_logits():
    q = sinkhorn_knopp(torch.tensor([[1000.0, 0.0], [0.0, 1000.0]]), temperature=0.04)
    assert torch.isfinite(q).all()
    assert torch.allclose(q, torch.eye(2), atol=1e-4)


def test_center_mode_and_update():
    loss = DINOLoss(3, centering="center", center_momentum=0.9)
    t = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.allclose(loss.teacher_probs(t, 0.5), F.softmax(t / 0.5, dim=-1))  # centre starts at 0
    loss.update_center(t)
    assert torch.allclose(loss.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0]]))
    loss.center.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.allclose(loss.teacher_probs(t, 0.5), F.softmax((t - loss.center) / 0.5, dim=-1))
    assert "center" in loss.state_dict()  # goes into checkpoints


def test_teacher_temperature_warmup():
    assert teacher_temperature(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature(10, 10, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature(3, 0, 0.04, 0.07) == pytest.approx(0.07)
    assert math.isclose(teacher_temperature(100, 10), 0.07)
