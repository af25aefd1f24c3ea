"""Metrics as plain, JSON-serialisable values: classification (torchmetrics) and segmentation (confusion matrix)."""

from dinotune.metrics.classification import (
    average_precision_columns,
    best_threshold,
    classification_metrics,
    multilabel_metrics,
)
from dinotune.metrics.segmentation import ConfusionMeter, confusion_matrix, scores

__all__ = [
    "ConfusionMeter",
    "average_precision_columns",
    "best_threshold",
    "classification_metrics",
    "confusion_matrix",
    "multilabel_metrics",
    "scores",
]
