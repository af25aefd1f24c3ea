"""Detector evaluation end to end on the generated shapes: a perfect predictor scores 1, a real one (colour
thresholds on the transformed image, so boxes must be mapped back through `scale`) matches pycocotools run on
the written predictions.json, and every output (CSV, drawings, report) is there and right."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from dinotune.data.boxes import load_detection
from dinotune.data.coco import write_coco_dataset
from dinotune.data.detection_dataset import DetectionDataset, detection_transform
from dinotune.evaluation.detect import evaluate_detections, match_image
from dinotune.evaluation.detect_report import SECTIONS

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _ground_truth_predictor(samples, image_size):
    """Each sample's own boxes in transformed pixels, batch after batch in dataset order."""
    seen = iter(samples)

    def predict(images: torch.Tensor):
        out = []
        for _ in range(len(images)):
            s = next(seen)
            scale = image_size / max(s.width, s.height)
            out.append(
                {
                    "boxes": torch.tensor(s.boxes * scale),
                    "scores": torch.ones(s.num_boxes),
                    "labels": torch.tensor(s.labels),
                }
            )
        return out

    return predict


def colour_detector(images: torch.Tensor):
    """Red, green and blue blobs of the transformed images as square/disc/triangle boxes (score: blob size)."""
    rgb = images.numpy() * np.asarray(STD, np.float32)[:, None, None] + np.asarray(MEAN, np.float32)[:, None, None]
    out = []
    for r, g, b in rgb:
        boxes, scores, labels = [], [], []
        for label, mask in enumerate(
            (r - np.maximum(g, b) > 0.3, g - np.maximum(r, b) > 0.25, b - np.maximum(r, g) > 0.25)
        ):
            blobs, _ = ndimage.label(mask)
            for sl in ndimage.find_objects(blobs):
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                scores.append(min(1.0, (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start) / 100))
                labels.append(label)
        out.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(scores),
                "labels": torch.tensor(labels),
            }
        )
    return out


def _pycocotools_map(annotation_file, results_file) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        evaluator = COCOeval(gt, gt.loadRes(str(results_file)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.fixture(scope="module")
def spec(shapes_coco):
    return load_detection(shapes_coco)


def test_perfect_predictions_score_one_and_every_output_is_written(spec, tmp_path):
    samples = spec.splits["test"]
    dataset = DetectionDataset(samples, detection_transform(False, 80, MEAN, STD))
    out = tmp_path / "eval"
    metrics = evaluate_detections(
        _ground_truth_predictor(samples, 80), dataset, spec.classes, out, category_ids=spec.category_ids, batch_size=3
    )
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_50"] == pytest.approx(1.0)
    assert list(metrics["ap_per_class"].values()) == pytest.approx([1.0, 1.0, 1.0])
    assert metrics["matched_at_iou_50"] == {"tp": metrics["boxes"], "fp": 0, "fn": 0}
    results = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in results} == {s.image_id for s in samples} and {
        r["category_id"] for r in results
    } <= {1, 2, 3}
    stats = _pycocotools_map(spec.root / "annotations" / "test.json", out / "predictions.json")
    assert stats[0] == pytest.approx(1.0)  # the written results, scored by the official code
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(samples) and {r["f1"] for r in rows} == {"1.0000"}
    assert json.loads((out / "metrics.json").read_text())["map"] == metrics["map"]
    report = (out / "report.html").read_text()
    assert all(f'id="{s}"' in report for s in SECTIONS) and report.count("data:image/png;base64") == 2 + 8
    assert "RANDOM WEIGHTS" not in report and "TINY DATASET" in report


def test_a_real_detector_is_scored_as_pycocotools_scores_its_results(spec, tmp_path):
    samples = spec.splits["test"]
    dataset = DetectionDataset(samples, detection_transform(False, 64, MEAN, STD))
    out = tmp_path / "eval"
    metrics = evaluate_detections(
        colour_detector,
        dataset,
        spec.classes,
        out,
        category_ids=spec.category_ids,
        drawings=2,
        backbone={"source": "random:x"},
    )
    stats = _pycocotools_map(spec.root / "annotations" / "test.json", out / "predictions.json")
    keys = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100"]
    np.testing.assert_allclose([metrics[k] for k in keys], stats[:9], atol=2e-3)  # results are rounded to 0.01 px
    assert metrics["map_50"] > 0.9 and 0.3 < metrics["map"] < 0.99  # mapped back right, not pixel-exact at 64 px
    assert len(metrics["drawings"]["worst"]) == len(metrics["drawings"]["best"]) == 2
    worst = metrics["drawings"]["worst"][0]
    assert (out / worst["path"]).is_file() and worst["caption"].startswith(worst["path"].split("_", 2)[2])
    assert "RANDOM WEIGHTS" in (out / "report.html").read_text()


def test_matching_counts_by_class_and_iou(spec):
    sample = next(s for s in spec.splits["val"] if s.num_boxes >= 2)
    boxes = sample.boxes.copy()
    pred = {"boxes": boxes, "scores": np.array([0.9] + [0.2] * (len(boxes) - 1)), "labels": sample.labels.copy()}
    assert match_image(pred, sample, 0.5)["tp"] == 1  # the low scores are below the threshold
    pred["labels"] = (sample.labels + 1) % 3
    assert match_image(pred, sample, 0.0) == {
        "tp": 0,
        "fp": sample.num_boxes,
        "fn": sample.num_boxes,
        "f1": 0.0,
        "mean_iou": pytest.approx(np.nan, nan_ok=True),
    }


def test_predictions_as_a_coco_dataset_load_back(spec, tmp_path):
    samples = spec.splits["val"][:3]
    predictions = [{"boxes": s.boxes, "scores": np.full(s.num_boxes, 0.5), "labels": s.labels} for s in samples]
    folder = tmp_path / "new"
    for s in samples:
        (folder / s.path.name).parent.mkdir(parents=True, exist_ok=True)
        (folder / s.path.name).write_bytes(s.path.read_bytes())
    images = [(s.path.name, s.width, s.height) for s in samples]
    write_coco_dataset(folder / "annotations" / "train.json", images, predictions, spec.classes, spec.category_ids)
    back = load_detection(folder, val_fraction=0.0)
    loaded = sorted(back.splits["train"] + back.splits["val"], key=lambda s: s.path.name)
    assert back.classes == spec.classes and back.category_ids == spec.category_ids
    for a, b in zip(samples, loaded, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.01)
        np.testing.assert_array_equal(a.labels, b.labels)
