"""Detection datasets (COCO-JSON or YOLO-txt) read into one `DetectionSpec`, split and checked.

`load_detection` is what training and evaluation call: it stops on the first error (one line naming the
file and annotation or line, and the fix; `dinotune data check --task detect` lists them all), logs the
problems it fixed (clipped boxes, boxes without area, background images) once each kind, and cuts a
validation split from train by seed when the dataset has none, as the other layouts do.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from dinotune.data.box_layouts import detection_layout
from dinotune.data.box_records import BoxProblem, BoxSample, DetectionSpec
from dinotune.data.splits import stratified_split
from dinotune.errors import DataError

__all__ = ["BoxProblem", "BoxSample", "DetectionSpec", "load_detection", "read_detection", "split_detection"]
log = logging.getLogger(__name__)


def read_detection(root: Path | str, layout: str = "auto") -> DetectionSpec:
    """The dataset as laid out on disk (splits as found; "all" when there are none), every problem in
    `spec.problems`, errors included. Only files that cannot be read as annotations at all raise."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass the dataset folder (annotations/ or images/ + labels/)")
    found = detection_layout(root) if layout == "auto" else layout
    if found == "coco":
        from dinotune.data.coco_format import read_coco as reader
    elif found == "yolo":
        from dinotune.data.yolo_format import read_yolo as reader
    else:
        raise DataError(
            f"{root}: not a detection dataset; expected annotations/train.json (COCO) or images/ + labels/ "
            "(YOLO), see docs/detection.md"
        )
    classes, category_ids, splits, problems = reader(root)
    if set(splits) == {"train"}:
        splits = {"all": splits["train"]}
    return DetectionSpec(root, found, classes, category_ids, splits, problems=problems)


def load_detection(
    root: Path | str, split_seed: int = 0, val_fraction: float = 0.2, layout: str = "auto"
) -> DetectionSpec:
    """Read, stop on errors, log the fixed problems, and split train/val when there is no val split."""
    spec = read_detection(root, layout)
    errors = [p for p in spec.problems if p.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more; `dinotune data check {spec.root} --task detect` lists all)"
        raise DataError(errors[0].message + (more if len(errors) > 1 else ""))
    for code, n in Counter(p.code for p in spec.problems).items():
        first = next(p for p in spec.problems if p.code == code)
        log.warning("%s%s", first.message, f" (and {n - 1} more like it)" if n > 1 else "")
    if not spec.classes:
        raise DataError(f"{spec.root}: no classes; name them in the annotations (COCO categories, YOLO data.yaml)")
    if "val" not in spec.splits:
        spec = split_detection(spec, split_seed, val_fraction)
    for name, samples in spec.splits.items():
        if not samples:
            log.warning("split %r of %s is empty", name, spec.root)
    return spec


def split_detection(spec: DetectionSpec, seed: int, val_fraction: float) -> DetectionSpec:
    """Cut `val` out of the training images (or "all"), seeded and stratified by each image's most frequent
    class (background images are a stratum of their own); test, when present, is left as it is."""
    source = "all" if "all" in spec.splits else "train"
    samples = sorted(spec.splits.get(source, []), key=lambda s: str(s.path))
    keys = [int(Counter(s.labels.tolist()).most_common(1)[0][0]) if s.num_boxes else -1 for s in samples]
    names = stratified_split(keys, {"val": val_fraction}, seed)
    splits = {k: v for k, v in spec.splits.items() if k != source}
    splits["train"] = [s for s, n in zip(samples, names, strict=True) if n == "train"]
    splits["val"] = [s for s, n in zip(samples, names, strict=True) if n == "val"]
    ordered = {k: splits[k] for k in ("train", "val", "test") if k in splits}
    spec.splits, spec.auto_split = ordered, True
    return spec
