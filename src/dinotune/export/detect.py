"""Detection export check: the boxes ONNX Runtime gives against PyTorch's, after the same NMS.

Both runtimes' raw outputs (decoded boxes and per-class scores before NMS) go through the one numpy
post-processing of `dinotune.model.nms` with the card's settings; each PyTorch detection is matched to
the nearest ONNX detection of its class, and the largest coordinate difference is the figure
(goal 1e-3 px). A detection without a counterpart counts as a mismatch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dinotune.export.quantize import run_session
from dinotune.model.nms import postprocess

BOX_GOAL = 1e-3  # pixels, after NMS


def match_detections(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, int]:
    """(largest coordinate difference of matched detections, detections without a same-class match)."""
    worst, unmatched = 0.0, abs(len(expected["boxes"]) - len(got["boxes"]))
    for box, label in zip(expected["boxes"], expected["labels"], strict=True):
        same = got["boxes"][got["labels"] == label]
        if not len(same):
            unmatched += 1
            continue
        worst = max(worst, float(np.abs(same - box).max(1).min()))
    return worst, unmatched


def detection_parity(module: Any, session: Any, cases: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per parity case and overall: the largest box difference after NMS and the detection counts."""
    cfg = module.model.postprocess_cfg
    per_case: dict[str, Any] = {}
    for name, x in cases.items():
        with torch.no_grad():
            boxes, scores = (t.numpy() for t in module(x))
        onnx_boxes, onnx_scores = run_session(session, x)
        worst, unmatched, count = 0.0, 0, 0
        for b, s, ob, os_ in zip(boxes, scores, onnx_boxes, onnx_scores, strict=True):
            expected = postprocess(b, s, cfg)
            diff, missing = match_detections(expected, postprocess(ob, os_, cfg))
            worst, unmatched, count = max(worst, diff), unmatched + missing, count + len(expected["boxes"])
        per_case[name] = {"max_box_diff": worst, "unmatched": unmatched, "detections": count}
    worst = max(c["max_box_diff"] for c in per_case.values())
    unmatched = sum(c["unmatched"] for c in per_case.values())
    return {"max_box_diff": worst, "unmatched": unmatched, "goal_px": BOX_GOAL,
            "within_goal": worst <= BOX_GOAL and unmatched == 0, "cases": per_case}  # fmt: skip
