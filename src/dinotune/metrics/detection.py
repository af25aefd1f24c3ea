"""COCO box mAP, computed by a COCO evaluation backend: faster-coco-eval's `COCOeval_faster`.

torchmetrics' `MeanAveragePrecision` hands this work to the same backends (pycocotools or faster-coco-eval),
but converts boxes with `torchvision.ops`, and torchvision is not a dependency here (its builds are tied to
one torch build). So predictions and targets go to the backend directly, as COCO dicts in memory.
faster-coco-eval gives pycocotools' figures to the last bit (its precision/recall arrays included) with the
per-image matching in C++: 5.8-7.5x faster on 1000 images (benchmarks/detection_metric.py), the difference
between a validation epoch that waits on its metric and one that does not. tests/metrics/test_detection.py
checks a hand-computed case and the official pycocotools file workflow (`COCO.loadRes`) on the same data.

Inputs, per image, numpy or torch: predictions `{"boxes": (M, 4) xyxy, "scores": (M,), "labels": (M,)}`,
targets `{"boxes": (N, 4) xyxy, "labels": (N,)}`, in the same pixels (the original image's). COCO's rules:
up to 100 detections per image, areas small < 32^2 <= medium < 96^2 <= large (box areas), -1 where a figure is
undefined (no ground truth of that kind).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

SUMMARY_KEYS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def _array(value: Any, dtype: Any, shape: tuple[int, ...] = (-1,)) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


def coco_ground_truth(targets: Sequence[dict[str, Any]], num_classes: int) -> dict[str, Any]:
    """Targets as a COCO dataset dict: image ids 1..N, category ids label + 1, boxes xywh."""
    annotations = []
    for image_id, target in enumerate(targets, start=1):
        boxes, labels = _array(target["boxes"], np.float64, (-1, 4)), _array(target["labels"], np.int64)
        for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
            w, h = float(x1 - x0), float(y1 - y0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(x0), float(y0), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {
        "images": [{"id": i} for i in range(1, len(targets) + 1)],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)],
    }


def coco_detections(predictions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predictions as COCO results: one {image_id, category_id, bbox xywh, score} per box."""
    out = []
    for image_id, pred in enumerate(predictions, start=1):
        boxes = _array(pred["boxes"], np.float64, (-1, 4))
        scores, labels = _array(pred["scores"], np.float64), _array(pred["labels"], np.int64)
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels, strict=True):
            out.append(
                {
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(score),
                }
            )
    return out


def run_cocoeval(ground_truth: dict[str, Any], detections: list[dict[str, Any]]) -> Any:
    """Evaluated and accumulated `COCOeval` (its printing silenced); its `.stats` and `.eval` hold the figures."""
    from faster_coco_eval import COCO
    from faster_coco_eval import COCOeval_faster as COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = COCO()
        dt.dataset = {
            "images": ground_truth["images"],
            "categories": ground_truth["categories"],
            "annotations": [
                {**d, "id": i, "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0} for i, d in enumerate(detections, 1)
            ],
        }
        dt.createIndex()  # not gt.loadRes: it fails on an empty list (a model that found nothing)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = [img["id"] for img in ground_truth["images"]]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def summarize(evaluator: Any, classes: Sequence[str]) -> dict[str, Any]:
    """The summary figures, AP and AR@100 per class name, and each class's precision-recall curve at IoU 0.5."""
    precision = evaluator.eval["precision"]  # (IoU thresholds, recall thresholds, classes, areas, max dets)
    recall = evaluator.eval["recall"]  # (IoU thresholds, classes, areas, max dets)
    result: dict[str, Any] = {key: float(v) for key, v in zip(SUMMARY_KEYS, evaluator.stats, strict=True)}
    result["ap_per_class"] = {name: _mean_valid(precision[:, :, k, 0, -1]) for k, name in enumerate(classes)}
    result["ap50_per_class"] = {name: _mean_valid(precision[0, :, k, 0, -1]) for k, name in enumerate(classes)}
    result["mar_100_per_class"] = {name: _mean_valid(recall[:, k, 0, -1]) for k, name in enumerate(classes)}
    result["pr_curve_50"] = {
        "recall": [float(r) for r in evaluator.params.recThrs],
        "precision": {name: [float(p) for p in precision[0, :, k, 0, -1]] for k, name in enumerate(classes)},
    }
    return result


def detection_metrics(
    predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]], classes: Sequence[str]
) -> dict[str, Any]:
    """COCO mAP and friends of `predictions` against `targets` (one dict each per image, in the same order)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    if not targets:
        raise ValueError("no images to evaluate")
    evaluator = run_cocoeval(coco_ground_truth(targets, len(classes)), coco_detections(predictions))
    return summarize(evaluator, classes)


class DetectionMetric:
    """Accumulate predictions and targets batch by batch (a validation epoch), then `compute()` once."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.reset()

    def reset(self) -> None:
        self.predictions: list[dict[str, np.ndarray]] = []
        self.targets: list[dict[str, np.ndarray]] = []

    def update(self, predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> None:
        for pred, target in zip(predictions, targets, strict=True):
            self.predictions.append(
                {
                    "boxes": _array(pred["boxes"], np.float32, (-1, 4)),
                    "scores": _array(pred["scores"], np.float32),
                    "labels": _array(pred["labels"], np.int64),
                }
            )
            self.targets.append(
                {"boxes": _array(target["boxes"], np.float32, (-1, 4)), "labels": _array(target["labels"], np.int64)}
            )

    def compute(self) -> dict[str, Any]:
        return detection_metrics(self.predictions, self.targets, self.classes)
