"""What an evaluation produces: the records `evaluate` fills and the report reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.evaluation import calibration as cal
from dinotune.evaluation.predict import Predictions
from dinotune.model import ModelCard


@dataclass
class DatasetResult:
    """One dataset's predictions, metrics and calibration."""

    name: str
    root: Path
    split: str
    note: str
    predictions: Predictions
    metrics: dict[str, Any]
    calibration: dict[str, Any] | None = None
    reliability: cal.Reliability | None = None
    reliability_scaled: cal.Reliability | None = None


@dataclass
class EvaluationResult:
    """Everything the report shows; `metrics` is exactly what `metrics.json` holds."""

    run: Path
    out: Path
    card: ModelCard
    datasets: list[DatasetResult]
    metrics: dict[str, Any]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    curve_x: str = "step"
    resumed_at: list[float] = field(default_factory=list)  # steps where a resumed run continued the log
    projections: dict[str, np.ndarray] = field(default_factory=dict)
    mistakes: list[tuple[np.ndarray, str, str, float]] = field(default_factory=list)
    patches: tuple[list[np.ndarray], list[np.ndarray], list[str]] | None = None
    ood_scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    report_path: Path | None = None
