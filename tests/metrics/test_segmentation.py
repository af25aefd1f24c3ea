"""Metrics against hand-computed confusion matrices, with ignore pixels and absent classes."""

from __future__ import annotations

import pytest
import torch

from dinotune.metrics import ConfusionMeter, confusion_matrix, scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin


def test_confusion_matrix_counts_and_ignores_pixels() -> None:
    target = torch.tensor([[0, 0, 1, 255], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 0, 0, 1]])
    m = confusion_matrix(pred, target, num_classes=3)
    # rows = truth, cols = prediction; the two 255 pixels are dropped whatever was predicted (2 and 0)
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_scores_hand_computed() -> None:
    m = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    s = scores(m, ["a", "b", "c"])
    # IoU: a 1/(2+2-1)=1/3, b 2/(2+3-2)=2/3, c 1/(2+1-1)=1/2
    assert s["iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 6)
    assert s["class_accuracy"] == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert s["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert s["iou_by_class"]["b"] == pytest.approx(2 / 3)
    assert s["pixels"] == 6


def test_absent_classes_are_excluded_but_false_alarms_count() -> None:
    # 4 classes: class 2 is in neither truth nor prediction -> no IoU, left out of the mean;
    # class 3 is predicted once but never true -> IoU 0, counted in mIoU, left out of class accuracy.
    target = torch.tensor([0, 0, 0, 1, 1, 255, 255])
    pred = torch.tensor([0, 0, 3, 1, 0, 2, 2])  # the class-2 predictions sit on ignored pixels
    m = confusion_matrix(pred, target, num_classes=4)
    assert m.tolist() == [[2, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    s = scores(m)
    assert s["iou"][2] is None
    assert s["iou"][:2] == pytest.approx([2 / 4, 1 / 2]) and s["iou"][3] == 0.0
    assert s["miou"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert s["class_accuracy"][2] is None and s["class_accuracy"][3] is None
    assert s["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)


def test_meter_accumulates_counts_not_per_batch_means() -> None:
    meter = ConfusionMeter(2)
    meter.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))  # batch IoU: 3/4, 0
    meter.update(torch.tensor([1]), torch.tensor([1]))  # batch IoU: -, 1
    s = meter.compute()
    assert meter.matrix.tolist() == [[3, 0], [1, 1]]
    assert s["iou"] == pytest.approx([3 / 4, 1 / 2])  # not the mean of per-batch IoUs
    meter.reset()
    assert int(meter.matrix.sum()) == 0


def test_perfect_prediction_and_all_ignored() -> None:
    t = torch.randint(0, 5, (2, 8, 8))
    assert scores(confusion_matrix(t, t, 5))["miou"] == pytest.approx(1.0)
    empty = scores(confusion_matrix(t, torch.full_like(t, 255), 5))
    assert empty["miou"] == 0.0 and empty["pixels"] == 0 and all(v is None for v in empty["iou"])


def test_out_of_range_labels_raise() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)
