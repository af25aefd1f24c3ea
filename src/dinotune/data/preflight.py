"""Dataset-level checks that must pass before any feature is extracted or any step is trained.

Each problem is one line naming what is wrong and the fix; problems about many files are aggregated
into one line (the count and the first 3 paths), never one line per file. `preflight(spec, cfg)` is
what training/probe/kNN call first (it reads headers only: seconds for thousands of files);
`dinotune data check` reports the same lines as errors and exits 1.

Checked: a classifier with one class; a class too small for the split; a patient (`data.group_by`,
for DICOM PatientID by default) with images in two splits; files whose channel count cannot become
`data.channels`; files whose headers cannot be read or are over the decode budget.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinotune.data.budget import BudgetError
from dinotune.data.decode import can_match_channels, image_info
from dinotune.data.formats import DatasetSpec
from dinotune.data.groups import leakage_problem
from dinotune.errors import DataError

log = logging.getLogger(__name__)
MAX_EXAMPLES = 3


@dataclass
class Problem:
    """One dataset-level problem: a stable code, one line of text with the fix, the files concerned."""

    code: str
    message: str
    files: list[Path] = field(default_factory=list)


def examples(paths: Iterable[Path], root: Path) -> str:
    """The first MAX_EXAMPLES paths, relative to `root`, for a one-line message."""
    paths = list(paths)
    names = []
    for p in paths[:MAX_EXAMPLES]:
        try:
            names.append(p.relative_to(root).as_posix())
        except ValueError:
            names.append(str(p))
    return ", ".join(names) + (", ..." if len(paths) > MAX_EXAMPLES else "")


def _class_counts(spec: DatasetSpec) -> dict[int, Counter[str]]:
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for split, samples in spec.splits.items():
        for s in samples:
            for c in [s.label] if isinstance(s.label, int) else (s.label or []):
                counts[c][split] += 1
    return counts


def _split_problem(spec: DatasetSpec, name: str, per_split: Counter[str], val_fraction: float) -> Problem | None:
    """Why class `name` cannot be both trained on and validated, or None.

    Unsplit data is split here (`formats.stratified_split`: round(n x val_fraction) validation images,
    at least one training image), so a class needs round(n x val_fraction) >= 1 and n >= 2.
    """
    total = sum(per_split.values())
    unsplit = spec.auto_split or set(spec.splits) == {"all"}
    if unsplit and val_fraction > 0 and min(int(total * val_fraction + 0.5), total - 1) < 1:
        fix = (
            f"add images, raise data.val_fraction to {math.ceil(50 / total) / 100:g}"
            if total >= 2
            else "add images or remove the class"
        )
        return Problem(
            "class_too_small",
            f"{spec.root}: class {name!r} has {total} image(s), too few for the split (val_fraction="
            f"{val_fraction:g} gives it no validation image); {fix}, or use train/ and val/ folders",
        )
    if not unsplit and not per_split["train"]:
        return Problem(
            "class_not_in_train",
            f"{spec.root}: class {name!r} has no image in the train split ({dict(per_split)}); "
            "move some of its images into train",
        )
    if not unsplit and spec.splits.get("val") and not per_split["val"]:
        return Problem(
            "class_not_in_val",
            f"{spec.root}: class {name!r} has no image in the val split ({dict(per_split)}); "
            "move some of its images into val",
        )
    return None


def class_problems(spec: DatasetSpec, val_fraction: float = 0.1) -> list[Problem]:
    """One class, or classes too small to be both trained on and validated (see `_split_problem`)."""
    if spec.task != "classify":
        return []
    counts = _class_counts(spec)
    present = [c for c in range(len(spec.classes)) if sum(counts[c].values())]
    if len(present) < 2:
        only = ", ".join(repr(spec.classes[c]) for c in present) or "none"
        return [
            Problem(
                "one_class",
                f"{spec.root}: only one class with images ({only}); a classifier needs at "
                "least 2 classes: add a folder (or label) per class",
            )
        ]
    problems = [_split_problem(spec, spec.classes[c], counts[c], val_fraction) for c in present]
    return [p for p in problems if p is not None]


def channel_problems(channels_of: dict[Path, int], channels: int, root: Path) -> list[Problem]:
    """Files whose channel count cannot be converted to `channels`, as one line per channel count."""
    bad: dict[int, list[Path]] = defaultdict(list)
    for path, have in channels_of.items():
        if not can_match_channels(have, channels):
            bad[have].append(path)
    return [
        Problem(
            "channels",
            f"{len(paths)} of {len(channels_of)} images have {have} channels but data.channels="
            f"{channels}, e.g. {examples(paths, root)}; set data.channels: {have} (and matching "
            "mean/std, see `dinotune data stats`) or convert the files",
            paths,
        )
        for have, paths in sorted(bad.items())
    ]


def file_problems(failures: dict[Path, DataError], total: int, root: Path) -> list[Problem]:
    """Unreadable and over-budget files, aggregated: one line per kind with the count and examples."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path, err in failures.items():
        groups["too_large" if isinstance(err, BudgetError) else "unreadable"].append(path)
    out = []
    for code, paths in sorted(groups.items()):
        first = str(failures[paths[0]]).removeprefix(f"{paths[0]}: ")
        what = "are over the decode budget" if code == "too_large" else "cannot be read"
        out.append(
            Problem(
                code,
                f"{len(paths)} of {total} images {what}, e.g. {examples(paths, root)} (first: "
                f"{first}); fix or remove them (`dinotune data check {root}` lists all)",
                paths,
            )
        )
    return out


def scan_headers(paths: list[Path], max_pixels: int) -> tuple[dict[Path, int], dict[Path, DataError]]:
    """Channel count of every file from its header (threads), and the files that failed."""
    from dinotune.data.decode import sniff_format
    from dinotune.data.headers import check_budget

    def one(path: Path) -> tuple[Path, Any]:
        try:
            fmt = sniff_format(path) if path.is_file() else None
            if fmt is not None:
                check_budget(path, fmt, max_pixels)
            return path, image_info(path).channels
        except (DataError, OSError) as exc:
            return path, exc if isinstance(exc, DataError) else DataError(f"{path}: cannot be read ({exc})")

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        results = list(pool.map(one, paths))
    return ({p: r for p, r in results if isinstance(r, int)}, {p: r for p, r in results if not isinstance(r, int)})


def leakage_problems(spec: DatasetSpec, group_by: str | None) -> list[Problem]:
    """A patient (or other `group_by` group) with images in two splits on disk, as one line."""
    found = leakage_problem(spec, group_by)
    return [Problem("group_leakage", found[0], found[1])] if found else []


def dataset_problems(spec: DatasetSpec, cfg: Any, channels: int | None = None) -> list[Problem]:
    """Every dataset-level problem of `spec` under the data config `cfg` (a DataConfig).

    `channels` is the channel count the run will read (e.g. the backbone's in_chans when
    `data.channels` is unset); default `cfg.channels`, else 3.
    """
    channels = channels or getattr(cfg, "channels", None) or 3
    paths = sorted({s.path for samples in spec.splits.values() for s in samples}, key=str)
    if not paths:
        return [Problem("no_images", f"{spec.root}: the dataset has no images; check data.root and the layout")]
    channels_of, failures = scan_headers(paths, cfg.max_pixels)
    problems = class_problems(spec, cfg.val_fraction) + leakage_problems(spec, getattr(cfg, "group_by", None))
    problems += channel_problems(channels_of, channels, spec.root)
    bad_files = file_problems(failures, len(paths), spec.root)
    if cfg.on_bad_file == "error" or len(failures) == len(paths):
        problems += bad_files
    else:
        for p in bad_files:  # they are skipped while training; say so once, not once per file
            log.warning("%s (skipped: data.on_bad_file=skip)", p.message)
    return problems


def preflight(spec: DatasetSpec, cfg: Any, channels: int | None = None) -> None:
    """Raise a one-line DataError for the first dataset-level problem (the count of others appended).

    Call it after `load_dataset(...)` and before extracting or training; `channels` as in `dataset_problems`.
    """
    problems = dataset_problems(spec, cfg, channels)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): run `dinotune data check`)" if len(problems) > 1 else ""
        raise DataError(problems[0].message + more)
