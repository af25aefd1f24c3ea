"""Evaluate a detector on a dataset split: COCO mAP, a row per image, COCO results, drawings, the report.

`predict_fn(images)` takes a batch `(B, 3, H, W)` from the eval transform and returns one prediction dict per
image in the transformed image's pixels; they are mapped back to the original pixels here (divided by the
item's `scale`, clipped to the image) and scored against the original boxes, so a box lost or changed by
the transform can never flatter the figures. Per image, predictions with a score of at least
`score_threshold` are matched to ground truth of their class at IoU >= 0.5 (greedily, best score first, as
COCO does) to count true/false positives and misses; those counts rank the images drawn as best and worst.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dinotune.atomic import atomic_path
from dinotune.data.box_records import BoxSample
from dinotune.data.coco import write_coco_results
from dinotune.data.decode import read_image
from dinotune.data.detection_dataset import DetectionDataset, collate_detection
from dinotune.errors import DataError
from dinotune.evaluation.detect_report import write_detection_report
from dinotune.metrics.detection import detection_metrics
from dinotune.report.boxes import draw_boxes
from dinotune.run_folder import write_json

PredictFn = Callable[[torch.Tensor], Sequence[dict[str, Any]]]


def _numpy(value: Any, dtype: Any, shape: tuple[int, ...] = (-1,)) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


def to_original(prediction: dict[str, Any], scale: float, width: int = 0, height: int = 0) -> dict[str, np.ndarray]:
    """A prediction in transformed pixels as numpy in the original image's pixels (clipped when its size is known)."""
    boxes = _numpy(prediction["boxes"], np.float32, (-1, 4)) / np.float32(scale)
    if width > 0 and height > 0:
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    return {
        "boxes": boxes,
        "scores": _numpy(prediction["scores"], np.float32),
        "labels": _numpy(prediction["labels"], np.int64),
    }


@torch.no_grad()
def predict_dataset(
    predict_fn: PredictFn, dataset: DetectionDataset, batch_size: int = 8, num_workers: int = 0
) -> list[dict[str, np.ndarray]]:
    """One prediction per sample of `dataset`, in order, in original pixels."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_detection
    )
    found: dict[int, dict[str, np.ndarray]] = {}
    for batch in loader:
        outputs = predict_fn(batch["image"])
        for pred, scale, index in zip(outputs, batch["scale"].tolist(), batch["index"].tolist(), strict=True):
            sample: BoxSample = dataset.samples[index]
            found.setdefault(index, to_original(pred, scale, sample.width, sample.height))
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, np.int64)}
    return [found.get(i, empty) for i in range(len(dataset.samples))]  # unreadable files (skipped): nothing found


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_image(
    prediction: dict[str, np.ndarray], sample: BoxSample, score_threshold: float, iou_threshold: float = 0.5
) -> dict[str, float]:
    """True/false positives, misses, F1 and mean IoU of the matches of one image."""
    keep = prediction["scores"] >= score_threshold
    boxes, labels = prediction["boxes"][keep], prediction["labels"][keep]
    order = np.argsort(-prediction["scores"][keep], kind="stable")
    ious = box_iou(boxes, sample.boxes) if len(boxes) and sample.num_boxes else np.zeros((len(boxes), sample.num_boxes))
    taken = np.zeros(sample.num_boxes, bool)
    matched: list[float] = []
    for i in order:
        candidates = np.where((sample.labels == labels[i]) & ~taken, ious[i], -1.0)
        j = int(np.argmax(candidates)) if candidates.size else -1
        if j >= 0 and candidates[j] >= iou_threshold:
            taken[j] = True
            matched.append(float(candidates[j]))
    tp, fp, fn = len(matched), len(boxes) - len(matched), sample.num_boxes - len(matched)
    f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "f1": f1, "mean_iou": float(np.mean(matched)) if matched else float("nan")}


def _write_rows(path: Path, samples: Sequence[BoxSample], rows: Sequence[dict[str, float]]) -> None:
    columns = ["path", "image_id", "boxes", "predicted", "tp", "fp", "fn", "f1", "mean_iou"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for s, r in zip(samples, rows, strict=True):
            iou = "" if np.isnan(r["mean_iou"]) else f"{r['mean_iou']:.4f}"
            writer.writerow(
                [
                    str(s.path),
                    s.image_id,
                    s.num_boxes,
                    r["tp"] + r["fp"],
                    r["tp"],
                    r["fp"],
                    r["fn"],
                    f"{r['f1']:.4f}",
                    iou,
                ]
            )


def _draw_ranked(
    out: Path,
    dataset: DetectionDataset,
    predictions: list,
    rows: list,
    classes: Sequence[str],
    threshold: float,
    n: int,
) -> dict[str, list[dict[str, str]]]:
    """PNG drawings of the `n` worst and `n` best images (by F1 at IoU 0.5, then by errors / boxes)."""
    worst = sorted(range(len(rows)), key=lambda i: (rows[i]["f1"], -(rows[i]["fp"] + rows[i]["fn"]), i))[:n]
    best = sorted(set(range(len(rows))) - set(worst), key=lambda i: (-rows[i]["f1"], -dataset.samples[i].num_boxes, i))
    written: dict[str, list[dict[str, str]]] = {"worst": [], "best": []}
    for kind, indices in (("worst", worst), ("best", best[:n])):
        for rank, i in enumerate(indices, start=1):
            sample, pred = dataset.samples[i], predictions[i]
            keep = pred["scores"] >= threshold
            shown = {k: v[keep] for k, v in pred.items()}
            image = read_image(sample.path, dataset.channels, dataset.scaling, dataset.max_pixels)
            drawing = draw_boxes(image, shown, classes, truth={"boxes": sample.boxes, "labels": sample.labels})
            target = out / "drawings" / f"{kind}_{rank:02d}_{sample.path.stem}.png"
            with atomic_path(target) as tmp:
                drawing.save(tmp, format="PNG")
            r = rows[i]
            caption = f"{sample.path.name}: F1 {r['f1']:.2f}, {r['tp']} found, {r['fp']} false, {r['fn']} missed"
            written[kind].append({"path": target.relative_to(out).as_posix(), "caption": caption})
    return written


def evaluate_detections(
    predict_fn: PredictFn,
    dataset: DetectionDataset,
    classes: Sequence[str],
    out: Path,
    *,
    category_ids: Sequence[int] | None = None,
    score_threshold: float = 0.5,
    batch_size: int = 8,
    drawings: int = 4,
    backbone: dict[str, Any] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Metrics of `predict_fn` on `dataset` (eval transform), with `out/` metrics.json, per_image.csv,
    predictions.json (COCO results: the samples' image ids, `category_ids` or 1..K), drawings/ and report.html."""
    out = Path(out)
    samples: list[BoxSample] = list(dataset.samples)
    if not samples:
        raise DataError("the split to evaluate has no images; pass a split that has some (--split)")
    predictions = predict_dataset(predict_fn, dataset, batch_size)
    targets = [{"boxes": s.boxes, "labels": s.labels} for s in samples]
    metrics: dict[str, Any] = detection_metrics(predictions, targets, classes)
    rows = [match_image(p, s, score_threshold) for p, s in zip(predictions, samples, strict=True)]
    ids = list(category_ids) if category_ids is not None else list(range(1, len(classes) + 1))
    write_coco_results(out / "predictions.json", samples, predictions, ids)
    _write_rows(out / "per_image.csv", samples, rows)
    metrics.update(
        task="detect",
        classes=list(classes),
        category_ids=ids,
        images=len(samples),
        boxes=int(sum(s.num_boxes for s in samples)),
        boxes_per_class={c: int(sum(int((s.labels == k).sum()) for s in samples)) for k, c in enumerate(classes)},
        detections=int(sum(len(p["scores"]) for p in predictions)),
        score_threshold=score_threshold,
        matched_at_iou_50={key: int(sum(r[key] for r in rows)) for key in ("tp", "fp", "fn")},
        drawings=_draw_ranked(out, dataset, predictions, rows, classes, score_threshold, drawings),
    )
    write_json(out / "metrics.json", metrics)
    write_detection_report(out, metrics, backbone=backbone, title=title)
    return metrics
