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
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first (ties: the earlier box first)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        overlaps = box_iou(boxes[best : best + 1], boxes[order[1:]])[0]
        order = order[1:][overlaps <= iou]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Class-aware NMS: boxes of different labels never suppress each other. Kept indices, by score."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    keep = np.concatenate([np.flatnonzero(labels == c)[nms(boxes[labels == c], scores[labels == c], iou)]
                           for c in np.unique(labels)])  # fmt: skip
    return keep[np.argsort(-scores[keep], kind="stable")]


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
    keep = batched_nms(chosen, chosen_scores, labels, cfg.nms_iou)[: cfg.max_detections]
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
