"""Evaluation images that are training images of the run: counted by content (same bytes), one warning.

A "shifted" or "external" dataset assembled by copying files often holds some of the training images;
its metrics then overstate what the model does on new data. Files are compared by size first and hashed
only when a size matches, so checking a large training set costs a directory walk.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path

from dinotune.data.spec import Sample
from dinotune.evaluation.predict import load_run_dataset

log = logging.getLogger("dinotune")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None


def training_samples(run: Path, task: str) -> list[Sample]:
    """The run's training images: its splits.json (automatic split) or its data root's train/ split."""
    from dinotune.run_folder import recorded_data_root

    root = recorded_data_root(run)
    if root is None or not root.exists():
        return []
    spec, _ = load_run_dataset(run, root, task)
    return list(spec.splits.get("train", []))


def overlap_count(evaluated: list[Path], training: list[Path]) -> int:
    """How many `evaluated` files have the bytes of a training file."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path in training:
        try:
            by_size[path.stat().st_size].append(path)
        except OSError:
            continue
    digests: dict[int, set[str | None]] = {}
    count = 0
    for path in evaluated:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if size not in by_size:
            continue
        if size not in digests:
            digests[size] = {_digest(p) for p in by_size[size]}
        count += _digest(path) in digests[size] - {None}
    return count


def warn_training_overlap(run: str | Path, root: str | Path, split: str, task: str) -> int:
    """Log one line when images evaluated on `root` are training images of `run`; the count."""
    run, root = Path(run), Path(root)
    spec, _ = load_run_dataset(run, root, task)
    used = split if split in spec.splits else "all" if "all" in spec.splits else None
    evaluated = [s.path for s in spec.splits.get(used, [])] if used else []
    training = [s.path for s in training_samples(run, task)]
    count = overlap_count(evaluated, training) if evaluated and training else 0
    if count:
        log.warning(
            "%s: %d of %d evaluated images are training images of this run (same bytes); "
            "their scores overstate accuracy on new data - remove them from the evaluation set",
            root,
            count,
            len(evaluated),
        )
    return count


__all__ = ["overlap_count", "training_samples", "warn_training_overlap"]
