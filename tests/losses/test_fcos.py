"""FCOS losses and target assignment on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from dinotune.losses.fcos import (
    FCOSLoss,
    assign,
    centerness_target,
    generalized_iou,
    sigmoid_focal_loss,
    size_ranges,
)


def test_generalized_iou_hand_cases() -> None:
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]])
    b = torch.tensor([[0.0, 0, 2, 2], [2, 0, 3, 1], [1, 1, 3, 3]])
    giou = generalized_iou(a, b)
    # identical: 1; disjoint: IoU 0, hull 3, union 2 -> -1/3; overlap 1 of union 7 in a hull of 9
    assert giou.tolist() == pytest.approx([1.0, -1 / 3, 1 / 7 - 2 / 9])


def test_sigmoid_focal_loss_hand_case() -> None:
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]), alpha=0.25, gamma=2.0)
    # p = 0.5: ce = log 2, (1 - p_t)^2 = 1/4, alpha 0.25 for the positive and 0.75 for the negative
    assert loss.tolist() == pytest.approx([0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)])
    confident = sigmoid_focal_loss(torch.tensor([4.0]), torch.tensor([1.0]))
    assert confident.item() < 1e-4  # easy examples are down-weighted


def test_assign_centre_sampling_smallest_box_and_ranges() -> None:
    points = torch.tensor([[8.0, 8, 4], [30, 30, 4], [12, 12, 4], [16, 16, 8]])  # x, y, stride
    boxes = torch.tensor([[0.0, 0, 16, 16], [0, 0, 40, 40]])
    labels = torch.tensor([1, 2])
    ranges = size_ranges(points[:, 2], [4, 8], factor=4.0)  # stride 4: [0, 32), stride 8: [32, inf)
    classes, matched = assign(points, boxes, labels, ranges, radius=1.5, num_classes=3)
    # (8, 8) is the centre of both: the smaller box; (30, 30) is far from both centres (> 1.5 strides):
    # background; (12, 12) is 4 px from the small box's centre (< 6 px): positive for it; (16, 16) on the
    # stride-8 level is at the big box's centre but its largest distance (24) is under that level's 32
    assert classes.tolist() == [1, 3, 1, 3]
    assert matched[0].tolist() == [0, 0, 16, 16]


def test_assign_without_boxes_is_all_background() -> None:
    points = torch.tensor([[8.0, 8, 4], [30, 30, 4]])
    classes, _ = assign(points, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(2, 2), 1.5, 5)
    assert classes.tolist() == [5, 5]


def test_centerness_target() -> None:
    points = torch.tensor([[5.0, 5, 4], [2, 5, 4]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    assert centerness_target(points, boxes).tolist() == pytest.approx([1.0, math.sqrt(2 / 8)])


def test_loss_is_low_for_a_perfect_prediction_and_trains() -> None:
    points = torch.tensor([[8.0, 8, 4], [24, 24, 4]])
    box, label = torch.tensor([[0.0, 0, 16, 16]]), torch.tensor([0])
    loss = FCOSLoss(2, [4])
    perfect = (torch.tensor([[[8.0, -8], [-8, -8]]]), torch.tensor([[[8.0, 8, 8, 8], [1, 1, 1, 1]]]),
               torch.tensor([[8.0, -8]]))  # fmt: skip
    good = loss(perfect, points, [box], [label])
    assert good["box"].item() == pytest.approx(0.0, abs=1e-6) and good["cls"].item() < 1e-3
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    distances = torch.full((1, 2, 4), 3.0, requires_grad=True)
    bad = loss((logits, distances, torch.zeros(1, 2, requires_grad=True)), points, [box], [label])
    bad["loss"].backward()
    assert bad["loss"].item() > good["loss"].item() + 0.5
    assert distances.grad[0, 0].lt(0).all()  # the positive's distances grow towards the box sides
