"""`data check` for detection datasets: every annotation problem by file and annotation id or line, the
boxes per class and split, and the dataset-level problems training would stop on or silently suffer from.

`data.check.check_dataset` decodes the images (unreadable, duplicate, tiny, mixed channels) as for every
layout and calls `box_report` for the boxes. Errors are what `load_detection` refuses (unknown category
ids, annotations naming missing images, malformed lines); warnings are what it fixes on reading (boxes
clipped to the image, boxes without area left out) or what is allowed but worth knowing (background
images, classes without boxes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dinotune.data.boxes import read_detection

AddIssue = Callable[[str, str, str, list[Path]], None]


def box_report(root: Path, report: Any, add: AddIssue) -> None:
    """Add the box findings of the dataset at `root` to `report` (a CheckReport) through `add`."""
    spec = read_detection(root)
    for problem in spec.problems:
        add(problem.severity, problem.code, problem.message, [problem.file] if problem.file else [])
    counts: dict[str, dict[str, int]] = {name: {} for name in spec.classes}
    background: list[Path] = []
    for split, samples in spec.splits.items():
        for sample in samples:
            for label in sample.labels.tolist():
                per = counts[spec.classes[label]]
                per[split] = per.get(split, 0) + 1
            if not sample.num_boxes:
                background.append(sample.path)
    report.class_counts = counts  # boxes, not images, for detection
    _dataset_problems(spec, counts, background, add)


def _dataset_problems(spec: Any, counts: dict[str, dict[str, int]], background: list[Path], add: AddIssue) -> None:
    n_images = sum(len(s) for s in spec.splits.values())
    named = {p.file for p in spec.problems if p.code == "no_label_file"}  # YOLO: named one by one already
    background = [p for p in background if p not in named]
    if background:
        add(
            "warning",
            "background_images",
            f"{len(background)} of {n_images} images have no boxes (e.g. {background[0].name}); they are kept as "
            "background images (trained as all negative; every box predicted on them is a false positive)",
            background,
        )
    train = "all" if "all" in spec.splits else "train"
    if spec.splits.get(train) and not any(per.get(train) for per in counts.values()):
        add(
            "error", "no_boxes", f"{spec.root}: the {train} images hold no boxes; a detector cannot learn from them", []
        )
    for name, per in counts.items():
        if not sum(per.values()):
            add(
                "warning",
                "empty_class",
                f"class {name!r} has no boxes; it cannot be learned (remove it from the categories or annotate it)",
                [],
            )
