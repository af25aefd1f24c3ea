"""Evaluation of trained models: metrics, calibration, robustness, OOD detection and run comparison.

`evaluate` and `compare` are the Python API of `dinotune evaluate` / `dinotune compare`; the other
modules are their building blocks and work on plain arrays, so they can be used on any predictions.
"""

from dinotune.evaluation.compare import compare
from dinotune.evaluation.evaluate import EvaluationResult, evaluate

__all__ = ["EvaluationResult", "compare", "evaluate"]
