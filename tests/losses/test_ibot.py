import pytest
import torch
import torch.nn.functional as F

from dinotune.losses import IBOTPatchLoss


def _ce(t, s, temp):
    return -(t * F.log_softmax(s / temp, dim=-1)).sum(-1)


def test_only_masked_patches_count_and_images_weigh_equally():
    torch.manual_seed(0)
    student = torch.randn(3, 4, 6)
    teacher = F.softmax(torch.randn(3, 4, 6), dim=-1)
    masks = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    loss_fn = IBOTPatchLoss(6, student_temp=0.1)
    loss = loss_fn(student, teacher, masks)
    img0 = (_ce(teacher[0, 0], student[0, 0], 0.1) + _ce(teacher[0, 1], student[0, 1], 0.1)) / 2
    img1 = _ce(teacher[1, 2], student[1, 2], 0.1)
    assert loss.item() == pytest.approx(((img0 + img1) / 2).item(), rel=1e-5)
    changed = student.clone()
    changed[~masks] = torch.randn(int((~masks).sum()), 6) * 10  # unmasked patches must not matter
    assert loss_fn(changed, teacher, masks).item() == pytest.approx(loss.item(), rel=1e-6)


def test_no_masked_patch_gives_zero_with_a_graph():
    student = torch.randn(2, 3, 4, requires_grad=True)
    loss = IBOTPatchLoss(4)(student, torch.rand(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad is not None


def test_teacher_probs_sinkhorn_rows_are_distributions():
    probs = IBOTPatchLoss(5).teacher_probs(torch.randn(9, 5), 0.07)
    assert torch.allclose(probs.sum(-1), torch.ones(9), atol=1e-5)
