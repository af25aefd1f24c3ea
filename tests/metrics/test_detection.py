"""COCO mAP: a case worked by hand, perfect predictions, and the official pycocotools file workflow
(`COCO(annotation file).loadRes(results)`) on a degraded predictor, all against `detection_metrics`."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from dinotune.data.boxes import load_detection
from dinotune.metrics.detection import DetectionMetric, detection_metrics
from tests.detection_fixtures import perfect_predictions, shifted_predictions


def _pred(boxes, scores, labels):
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "scores": np.asarray(scores),
        "labels": np.asarray(labels),
    }


def _target(boxes, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


def test_a_case_worked_by_hand():
    """Class a: 3 objects; detections by score TP (exact), FP (IoU 1/3 with the only object left), TP (exact),
    one object missed. Precision/recall after each: (1, 1/3), (1/2, 1/3), (2/3, 2/3). COCO's interpolated
    precision at the 101 recall points is 1 for r <= 1/3 (34 points), 2/3 for 1/3 < r <= 2/3 (33 points),
    0 beyond: AP = (34 + 33 * 2/3) / 101 = 56/101 at every IoU threshold (the hits are exact, the miss far).
    Class b: one object found with IoU 320/480 = 2/3: a hit at the thresholds 0.50..0.65 (4 of 10): AP 0.4."""
    targets = [
        _target([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 60, 60]], [0, 0, 1]),
        _target([[0, 0, 10, 10]], [0]),
    ]
    predictions = [
        _pred([[0, 0, 10, 10], [44, 40, 64, 60]], [0.9, 0.6], [0, 1]),
        _pred([[5, 0, 15, 10], [0, 0, 10, 10]], [0.8, 0.7], [0, 0]),
    ]
    result = detection_metrics(predictions, targets, ["a", "b"])
    ap_a = 56 / 101
    assert result["ap_per_class"] == pytest.approx({"a": ap_a, "b": 0.4})
    assert result["ap50_per_class"] == pytest.approx({"a": ap_a, "b": 1.0})
    assert result["map"] == pytest.approx((ap_a + 0.4) / 2)
    assert result["map_50"] == pytest.approx((ap_a + 1.0) / 2)
    assert result["map_75"] == pytest.approx(ap_a / 2)
    assert result["map_small"] == pytest.approx(result["map"]) and result["map_medium"] == result["map_large"] == -1
    assert result["mar_100_per_class"] == pytest.approx({"a": 2 / 3, "b": 0.4})
    assert result["mar_1"] == pytest.approx((1 / 3 + 0.4) / 2)  # one detection per image: a finds 1 of 3
    curve = result["pr_curve_50"]
    assert len(curve["recall"]) == 101 and curve["precision"]["a"][:34] == pytest.approx([1.0] * 34)
    assert curve["precision"]["a"][34:67] == pytest.approx([2 / 3] * 33) and max(curve["precision"]["a"][67:]) == 0


def test_perfect_predictions_score_one_and_batches_add_up(shapes_coco):
    samples = load_detection(shapes_coco).splits["val"]
    targets = [{"boxes": s.boxes, "labels": s.labels} for s in samples]
    perfect = detection_metrics(perfect_predictions(samples), targets, ["square", "disc", "triangle"])
    assert perfect["map"] == perfect["map_50"] == perfect["mar_100"] == 1.0
    assert set(perfect["ap_per_class"].values()) == {1.0}
    metric = DetectionMetric(["square", "disc", "triangle"])
    shifted = shifted_predictions(samples, 0.2)
    for start in range(0, len(samples), 3):  # torch tensors, a few images at a time, as a validation loop
        part = slice(start, start + 3)
        metric.update(
            [{k: torch.as_tensor(v) for k, v in p.items()} for p in shifted[part]],
            [{k: torch.as_tensor(v) for k, v in t.items()} for t in targets[part]],
        )
    batched = metric.compute()
    assert batched == detection_metrics(shifted, targets, ["square", "disc", "triangle"])
    assert 0.05 < batched["map"] < 0.9 and batched["map_50"] == pytest.approx(1.0)  # IoU 0.2 shift = 2/3 >= 0.5


def test_matches_the_official_pycocotools_workflow(shapes_coco):
    """The annotation file as written (original ids, categories 1..3), the results as COCO results, evaluated by
    pycocotools: the same figures as `detection_metrics` on the samples read by `load_detection`."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    spec = load_detection(shapes_coco)
    samples = spec.splits["test"]
    predictions = shifted_predictions(samples, 0.15, seed=1)  # IoU 0.85 / 1.15 = 0.74
    for p in predictions[::3]:
        p["labels"] = (p["labels"] + 1) % 3  # some wrong classes too
    results = [
        {
            "image_id": s.image_id,
            "category_id": spec.category_ids[int(label)],
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "score": float(score),
        }
        for s, p in zip(samples, predictions, strict=True)
        for (x0, y0, x1, y1), score, label in zip(p["boxes"], p["scores"], p["labels"], strict=True)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(shapes_coco / "annotations" / "test.json"))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    targets = [{"boxes": s.boxes, "labels": s.labels} for s in samples]
    ours = detection_metrics(predictions, targets, spec.classes)
    keys = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100"]
    np.testing.assert_allclose([ours[k] for k in keys], evaluator.stats[:9], atol=1e-9)
    assert 0.1 < ours["map"] < 0.6
