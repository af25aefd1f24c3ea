"""`dinotune evaluate RUN [DATA...]`: metrics and report.html for any model, on any labelled data.

Dispatches on the model card's task: classifiers get the full classification report (curves,
calibration, mistakes, robustness, OOD), segmenters mIoU, per-class IoU, the confusion matrix and
overlays. Without DATA the run's own data (its splits.json or config.yaml) is used, and without `--split`
the split the run reported on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dinotune.errors import DataError
from dinotune.evaluation.depth import evaluate_depth
from dinotune.evaluation.evaluate import evaluate
from dinotune.evaluation.overlap import warn_training_overlap
from dinotune.evaluation.segment import evaluate_segmentation
from dinotune.model import read_card
from dinotune.run_folder import recorded_data_root, staged_output
from dinotune.verbs.common import Result


def _run_data(run: Path) -> Path:
    """The dataset a run was trained on (an error naming the flag when it records none)."""
    root = recorded_data_root(run)
    if root is None:
        raise DataError(f"'{run}' does not record its dataset (no splits.json, no config.yaml): evaluate RUN DATA.")
    return root


def _report_split(run: Path) -> str:
    """The split a run reported on (metrics.json's report_split), else test."""
    try:
        return str(json.loads((run / "metrics.json").read_text()).get("report_split") or "test")
    except (OSError, ValueError, AttributeError):
        return "test"


def run_evaluate(
    run: str | Path,
    data: str | Path | Sequence[str | Path] | None = None,
    *,
    split: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Result:
    """Evaluate the model in `run` (run, model or export folder); writes `out` (default RUN/evaluation)
    whole or not at all. `options` go to the classification evaluation (robustness, ood_data, ...)."""
    run = Path(run)
    card = read_card(run)
    split = split or _report_split(run)
    data = data if data else _run_data(run)
    out_dir = Path(out) if out is not None else run / "evaluation"
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    for root in roots:  # one line per dataset holding training images (by content)
        if card.task not in ("depth", "detect"):  # depth/box folders are not a layout the overlap check reads
            warn_training_overlap(run, root, split, "segment" if card.task == "segment" else "classify")
    with staged_output(out_dir, overwrite=overwrite, keep=[run, *roots]) as stage:
        if card.task == "detect":
            from dinotune.verbs.detect_predict import evaluate_detection_run

            if len(roots) != 1:
                raise DataError("detection evaluation takes one dataset (DATA once).")
            metrics = evaluate_detection_run(run, Path(roots[0]), split, stage)
        elif card.task == "depth":
            if len(roots) != 1:
                raise DataError("depth evaluation takes one dataset (DATA once).")
            metrics = evaluate_depth(run, roots[0], split=split, out=stage)
        elif card.task == "segment":
            if len(roots) != 1:
                raise DataError("segmentation evaluation takes one dataset (DATA once).")
            metrics = evaluate_segmentation(run, roots[0], split=split, out=stage)
        else:
            metrics = evaluate(run, data=data, split=split, out=stage, **options).metrics
    return Result(out_dir, metrics)
