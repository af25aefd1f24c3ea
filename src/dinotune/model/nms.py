"""Detection post-processing in numpy alone: score threshold, top-k, class-aware NMS.

PyTorch (`Detector.predict`) and ONNX Runtime (`OnnxDetector`, the torch-free server) both end here,
on the same decoded boxes and per-class scores, so the two runtimes keep the same detections by
construction: only the graph's float differences can move a box, never a different NMS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PostprocessConfig:
    """How raw per-location outputs become detections (stored in the card's `inference`)."""

    score_threshold: float = 0.05
    nms_iou: float = 0.6
    pre_nms_top_k: int = 1000
    max_detections: int = 100


def postprocess_config(values: dict | None) -> PostprocessConfig:
    """The card's `inference` section (unknown keys ignored: cards may carry other runtimes' settings)."""
    known = PostprocessConfig.__dataclass_fields__
    return PostprocessConfig(**{k: v for k, v in (values or {}).items() if k in known})


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), xyxy: (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    width = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(0)
    height = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(0)
    inter = width * height
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first (ties: the earlier box first); a box
    is suppressed by a kept one overlapping it more than `iou`. Stops after `limit` kept boxes."""
    order = np.argsort(-scores, kind="stable")
    ranked = boxes[order].astype(np.float64)
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):  # one IoU row per kept box: at most `limit` rows
        if suppressed[i]:
            continue
        keep.append(i)
        if limit is not None and len(keep) >= limit:
            break
        suppressed[i + 1 :] |= box_iou(ranked[i : i + 1], ranked[i + 1 :])[0] > iou
    return order[np.asarray(keep, dtype=np.int64)]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float,
                limit: int | None = None) -> np.ndarray:  # fmt: skip
    """Class-aware NMS: boxes of different labels never suppress each other (each label's boxes are moved
    to their own region, so one greedy pass over all does it). Kept indices, by score."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    boxes = boxes.astype(np.float64)
    offsets = labels.astype(np.float64) * (np.abs(boxes).max() * 2 + 1)
    return nms(boxes + offsets[:, None], scores, iou, limit)


def postprocess(boxes: np.ndarray, scores: np.ndarray, cfg: PostprocessConfig) -> dict[str, np.ndarray]:
    """One image's decoded boxes (L, 4) and per-class scores (L, K) -> its detections.

    Every (location, class) pair over the threshold is a candidate, as FCOS does; the `pre_nms_top_k`
    best go to class-aware NMS and the `max_detections` best survivors are returned."""
    flat = scores.reshape(-1)
    candidates = np.flatnonzero(flat > cfg.score_threshold)
    if candidates.size > cfg.pre_nms_top_k:
        candidates = candidates[np.argsort(-flat[candidates], kind="stable")[: cfg.pre_nms_top_k]]
    locations, labels = np.divmod(candidates, scores.shape[1])
    chosen, chosen_scores = boxes[locations].astype(np.float32), flat[candidates].astype(np.float32)
    keep = batched_nms(chosen, chosen_scores, labels, cfg.nms_iou, cfg.max_detections)
    return {
        "boxes": chosen[keep].reshape(-1, 4),
        "scores": chosen_scores[keep],
        "labels": labels[keep].astype(np.int64),
    }


def to_original(detections: dict[str, np.ndarray], scale: float, height: int, width: int) -> dict[str, np.ndarray]:
    """Boxes in the letterboxed input's pixels -> the original image's pixels (divided by the resize
    factor, clipped to the image)."""
    boxes = detections["boxes"] / scale
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return {**detections, "boxes": boxes.astype(np.float32)}
