"""Semantic segmentation on custom masks: heads, losses, metrics, sliding-window inference, training verb.

Entry points: `run_segment(SegmentConfig)` (train + evaluate + predictions), `predict_masks(model_dir,
images, out)` (index-PNG masks for new images), `load_segmenter(folder)` (plain-PyTorch model).
Heavy modules (Lightning) load lazily so `dinotune.segmentation.metrics` stays cheap to import.
"""

from __future__ import annotations

from typing import Any

from dinotune.segmentation.heads import HeadConfig, LinearSegHead, MultiScaleDecoder
from dinotune.segmentation.inference import InferenceConfig, predict_probs, sliding_window
from dinotune.segmentation.losses import LossConfig, SegmentationLoss, dice_loss
from dinotune.segmentation.metrics import ConfusionMeter, confusion_matrix, scores
from dinotune.segmentation.model import Segmenter, load_segmenter, save_segmenter

_LAZY = {"SegmentConfig", "SegmentResult", "run_segment", "predict_masks", "evaluate_segmenter"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from dinotune.segmentation import verb

        return getattr(verb, name)
    raise AttributeError(f"module 'dinotune.segmentation' has no attribute {name!r}")


__all__ = ["ConfusionMeter", "HeadConfig", "InferenceConfig", "LinearSegHead", "LossConfig", "MultiScaleDecoder",
           "SegmentConfig", "SegmentResult", "SegmentationLoss", "Segmenter", "confusion_matrix", "dice_loss",
           "evaluate_segmenter", "load_segmenter", "predict_masks", "predict_probs", "run_segment", "save_segmenter",
           "scores", "sliding_window"]
