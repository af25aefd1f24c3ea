"""Which images belong together (one patient, one study), so that no group straddles train/val/test.

`data.group_by` names the key: a DICOM attribute keyword (`PatientID`, `StudyInstanceUID`, any other
header keyword) read from each DICOM file's header, or a column of the CSV annotation file. Images
without the key are groups of their own. The automatic split assigns whole groups
(`dinotune.data.splits`); `leakage_problem` finds a group in two splits of a dataset split on disk.
Without `group_by`, DICOM files are checked by PatientID (the leakage a radiology dataset suffers most).
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dinotune.data.spec import DatasetSpec, Sample
from dinotune.errors import DataError

DEFAULT_KEY = "PatientID"


def _dicom_value(path: Path, key: str) -> str | None:
    """The header attribute `key` of a DICOM file, as text; None for other files, or when it is absent."""
    try:
        with open(path, "rb") as handle:
            if handle.read(132)[128:132] != b"DICM":
                return None
    except OSError:
        return None
    from dinotune.data.dicom import read_header

    try:
        value = read_header(path).get(key)
    except DataError:
        return None  # an unreadable file is reported by the file checks, not here
    text = "" if value is None else str(value).strip()
    return text or None


def group_keys(samples: list[Sample], key: str | None) -> list[str | None]:
    """The group of every sample: its CSV column value, else its DICOM attribute `key` (default PatientID)."""
    name = key or DEFAULT_KEY
    todo = [s.path for s in samples if s.group is None]
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        found = dict(zip(todo, pool.map(lambda p: _dicom_value(p, name), todo), strict=True))
    return [s.group if s.group is not None else found[s.path] for s in samples]


def check_group_key(spec: DatasetSpec, keys: list[str | None], key: str) -> None:
    """A `group_by` that matches nothing is a typo, not a dataset without groups."""
    if not any(k is not None for k in keys):
        raise DataError(
            f"{spec.root}: data.group_by={key!r} matches no CSV column and no DICOM attribute of any file; "
            "use a DICOM keyword such as PatientID or StudyInstanceUID, or a column of the CSV"
        )


def leakage_problem(spec: DatasetSpec, key: str | None) -> tuple[str, list[Path]] | None:
    """One line (and the files) when a group has images in more than one split of a split-on-disk dataset."""
    splits = {name: samples for name, samples in spec.splits.items() if name != "all"}
    if len(splits) < 2 or spec.auto_split:
        return None  # the automatic split keeps groups whole when group_by is set
    where: dict[str, set[str]] = defaultdict(set)
    files: dict[str, list[Path]] = defaultdict(list)
    for name, samples in splits.items():
        for sample, group in zip(samples, group_keys(samples, key), strict=True):
            if group is not None:
                where[group].add(name)
                files[group].append(sample.path)
    leaked = sorted(g for g, names in where.items() if len(names) > 1)
    if not leaked:
        return None
    first = leaked[0]
    order = [n for n in ("train", "val", "test") if n in where[first]] + sorted(where[first] - {"train", "val", "test"})
    what = key or DEFAULT_KEY
    message = (
        f"{spec.root}: {len(leaked)} {what} value(s) have images in more than one split (leakage), e.g. "
        f"{what} {first!r} in {'/'.join(order)}; move each {what}'s images into one split, "
        "or merge the splits and let data.group_by split them"
    )
    return message, [p for g in leaked for p in files[g]]


def split_note(spec: DatasetSpec, group_by: str | None) -> str | None:
    """For `data check`: unsplit data whose DICOM patients hold several images, which the automatic split
    would part unless data.group_by is set; None otherwise."""
    if set(spec.splits) != {"all"} or group_by:
        return None
    counts: dict[str, int] = defaultdict(int)
    for group in group_keys(spec.splits["all"], None):
        if group is not None:
            counts[group] += 1
    n = sum(1 for c in counts.values() if c > 1)
    if not n:
        return None
    return (
        f"{n} {DEFAULT_KEY}(s) have several images and the automatic split may put one patient in two splits; "
        f"set data.group_by={DEFAULT_KEY} (or StudyInstanceUID)"
    )


__all__ = ["DEFAULT_KEY", "check_group_key", "group_keys", "leakage_problem", "split_note"]
