"""The numpy post-processing both runtimes share, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from dinotune.model.nms import (
    PostprocessConfig,
    batched_nms,
    box_iou,
    nms,
    postprocess,
    postprocess_config,
    to_original,
)


def test_box_iou_hand_cases() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float32)
    b = np.array([[1, 1, 3, 3], [5, 5, 6, 6], [0, 0, 2, 2]], np.float32)
    iou = box_iou(a, b)
    assert iou[0, 0] == pytest.approx(1 / 7)  # overlap 1, union 4 + 4 - 1
    assert iou[0, 1] == 0 and iou[0, 2] == pytest.approx(1.0) and iou[1, 2] == pytest.approx(0.25)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.8, 0.9, 0.5, 0.7], np.float32)
    # box 1 (best) suppresses 0 (IoU 9/11) and 3; box 2 does not overlap
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.96).tolist() == [1, 0, 3, 2]  # 0 and 3 overlap 100/105 < 0.96: all kept


def test_batched_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    labels = np.array([0, 1, 0])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1]


def test_postprocess_threshold_top_k_and_limit() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], np.float32)
    scores = np.array([[0.9, 0.01], [0.02, 0.6], [0.3, 0.2]], np.float32)  # (L, K)
    out = postprocess(boxes, scores, PostprocessConfig(score_threshold=0.1, nms_iou=0.5))
    assert out["labels"].tolist() == [0, 1, 0, 1] and out["scores"].tolist() == pytest.approx([0.9, 0.6, 0.3, 0.2])
    assert out["boxes"][1].tolist() == [20, 0, 30, 10]
    top = postprocess(boxes, scores, PostprocessConfig(score_threshold=0.1, pre_nms_top_k=2, max_detections=1))
    assert top["labels"].tolist() == [0] and top["boxes"].shape == (1, 4)
    empty = postprocess(boxes, scores, PostprocessConfig(score_threshold=0.95))
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == np.int64


def test_to_original_divides_by_the_scale_and_clips() -> None:
    detections = {"boxes": np.array([[10, 20, 70, 40]], np.float32), "scores": np.ones(1), "labels": np.zeros(1)}
    out = to_original(detections, 0.5, height=60, width=100)
    assert out["boxes"].tolist() == [[20, 40, 100, 60]]


def test_postprocess_config_ignores_unknown_card_keys() -> None:
    cfg = postprocess_config({"nms_iou": 0.3, "mode": "slide"})
    assert cfg.nms_iou == 0.3 and cfg.score_threshold == PostprocessConfig().score_threshold
