"""Evaluation of trained models: metrics, calibration, robustness, OOD detection, segmentation, comparison.

The verbs `dinotune evaluate` / `dinotune compare` (in `dinotune.verbs`) call these; the other modules
are their building blocks and work on plain arrays, so they can be used on any predictions.
"""
