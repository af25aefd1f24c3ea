"""The Mask2Former set loss on a case small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dinotune.losses.mask2former import Mask2FormerLoss, class_log_probs, semantic_targets

S = 1 / (1 + math.exp(-2.0))  # sigmoid(2): the confident mask probability below


def _case() -> tuple[dict, torch.Tensor]:
    """A 2x2 image: top row class 0, bottom row class 1. Three queries over 2 classes (+ "no object"):
    q0 says "class 1, bottom row", q1 "class 0, top row", q2 "no object"; masks are +-2 logits."""
    target = torch.tensor([[[0, 0], [1, 1]]])
    top = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])
    masks = torch.stack([-top, top, torch.zeros(2, 2)])[None]  # (1, 3, 2, 2)
    logits = torch.tensor([[[0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    return {"pred_logits": logits, "pred_masks": masks}, target


def test_targets_are_one_binary_mask_per_class_present() -> None:
    labels, masks = semantic_targets(torch.tensor([[[2, 2], [255, 0]]]))[0]
    assert labels.tolist() == [0, 2]
    assert masks.tolist() == [[[0, 0], [0, 1]], [[1, 1], [0, 0]]]


def test_hungarian_matching_pairs_each_target_with_its_query() -> None:
    outputs, target = _case()
    loss = Mask2FormerLoss()
    valid = torch.ones(1, 2, 2)
    logp = class_log_probs(outputs["pred_logits"])
    ((rows, cols),) = loss.match(logp, outputs["pred_masks"], semantic_targets(target), valid)
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 1, 1: 0}  # target 0 (class 0) <- q1
    # the query order does not matter: swapping q0 and q1 swaps the match
    swapped = {k: v[:, [1, 0, 2]] for k, v in outputs.items()}
    (rows, cols), = loss.match(class_log_probs(swapped["pred_logits"]), swapped["pred_masks"],
                               semantic_targets(target), valid)  # fmt: skip
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 0, 1: 1}


def test_loss_equals_the_hand_computed_value() -> None:
    outputs, target = _case()
    # class CE: every query has the right class at softmax(3, 0, 0); "no object" weighs 0.1
    ce_one = math.log(1 + 2 / math.exp(3))
    ce = (ce_one + ce_one + 0.1 * ce_one) / (1 + 1 + 0.1)
    bce = -math.log(S)  # every pixel of both matched masks is right with probability sigmoid(2)
    dice = 1 - (2 * 2 * S + 1) / (2 + 2 + 1)  # sum p = 2 (S + 1 - S per row), sum t = 2, sum pt = 2S
    expected = 2.0 * ce + 5.0 * bce + 5.0 * dice
    got = Mask2FormerLoss(aux=False)(outputs, target)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # weights change the terms separately
    only_ce = Mask2FormerLoss(class_weight=1, mask_weight=0, dice_weight=0, aux=False)(outputs, target)
    assert only_ce.item() == pytest.approx(ce, rel=1e-5)


def test_aux_outputs_add_their_losses_and_ignored_pixels_do_not_count() -> None:
    outputs, target = _case()
    single = Mask2FormerLoss(aux=False)(outputs, target)
    with_aux = Mask2FormerLoss()({**outputs, "aux_outputs": [dict(outputs), dict(outputs)]}, target)
    assert with_aux.item() == pytest.approx(3 * single.item(), rel=1e-6)
    # a wrong prediction on an ignored pixel changes nothing
    ignored = target.clone()
    ignored[0, 1, 1] = 255
    bad = {k: v.clone() for k, v in outputs.items()}
    bad["pred_masks"][0, 0, 1, 1] = -50.0
    a = Mask2FormerLoss(aux=False)(outputs, ignored)
    b = Mask2FormerLoss(aux=False)(bad, ignored)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_point_sampling_equals_full_masks_where_masks_are_constant() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)  # one class everywhere
    outputs = {"pred_logits": torch.tensor([[[3.0, 0.0], [0.0, 3.0]]]), "pred_masks": torch.full((1, 2, 4, 4), 2.0)}
    outputs["pred_masks"][0, 1] = -2.0
    gen = torch.Generator().manual_seed(0)
    sampled = Mask2FormerLoss(points=32, aux=False, dice_weight=0)(outputs, target, generator=gen)  # < 64 pixels
    full = Mask2FormerLoss(aux=False, dice_weight=0)(outputs, target)  # (Dice's +1 smoothing depends on the count)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-5)


def test_aggregated_class_probabilities_are_sums() -> None:
    logits = torch.tensor([[[1.0, 2.0, 0.5, -1.0]]])  # 3 head classes + "no object"
    p = [math.exp(v) for v in (1.0, 2.0, 0.5, -1.0)]
    total = sum(p)
    matrix = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # user 0 = head 0 + 1, user 1 = head 2
    got = class_log_probs(logits, matrix).exp()[0, 0].tolist()
    assert got == pytest.approx([(p[0] + p[1]) / total, p[2] / total, p[3] / total], rel=1e-5)
