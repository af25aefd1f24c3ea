"""Splitting data that has no split folders: stratified, seeded, optionally by group (`data.group_by`:
a patient's images stay in one split), and written to a file so a run stays reproducible when files
are added later."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.data.groups import check_group_key, group_keys
from dinotune.data.spec import SPLITS, DatasetSpec
from dinotune.errors import DataError


def stratified_split(keys: Sequence[Any], fractions: dict[str, float], seed: int) -> list[str]:
    """Assign each item a split name so that every label key is spread in the given proportions.

    Deterministic given the order of `keys` and `seed`; each group keeps at least one training item.
    """
    rng = np.random.default_rng(seed)
    out = ["train"] * len(keys)
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(repr(k), []).append(i)
    for g in sorted(groups):
        idx = groups[g]
        order = [idx[j] for j in rng.permutation(len(idx))]
        start = 0
        for name, frac in fractions.items():
            n = min(int(len(idx) * frac + 0.5), len(idx) - 1 - start)
            for i in order[start : start + max(n, 0)]:
                out[i] = name
            start += max(n, 0)
    return out


def grouped_split(
    keys: Sequence[Any], groups: Sequence[str | None], fractions: dict[str, float], seed: int
) -> list[str]:
    """`stratified_split` over groups: every image of a group gets its group's split, so one patient
    never straddles train/val/test. A group is stratified by its first image's label key; an image
    without a group is a group of its own."""
    first: dict[str, int] = {}
    names = [g if g is not None else f"\0{i}" for i, g in enumerate(groups)]
    for i, g in enumerate(names):
        first.setdefault(g, i)
    order = sorted(first, key=first.__getitem__)
    chosen = dict(zip(order, stratified_split([keys[first[g]] for g in order], fractions, seed), strict=True))
    return [chosen[g] for g in names]


def apply_split(
    spec: DatasetSpec, val: float, test: float, seed: int, split_file: Path | None, group_by: str | None = None
) -> DatasetSpec:
    samples = sorted(spec.splits["all"], key=lambda s: str(s.path))
    rel = [_rel(s.path, spec.root) for s in samples]
    if split_file is not None and split_file.is_file():
        try:
            saved = json.loads(split_file.read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{split_file}: not a dinotune split file; delete it to recompute the split") from None
        where = {p: name for name, paths in saved.items() for p in paths}
        added = [r for r in rel if r not in where]
        removed = len(where) - (len(rel) - len(added))
        if added or removed:
            raise DataError(
                f"{split_file} was made for a different file list "
                f"({len(added)} new, {removed} missing files); "
                "delete it to re-split, or use a new run directory"
            )
        names = [where[r] for r in rel]
    else:
        keys = [s.label if spec.task == "classify" else 0 for s in samples]
        if group_by or any(s.group is not None for s in samples):  # a key, or volumes cut into slices
            groups = group_keys(samples, group_by)
            if group_by:
                check_group_key(spec, groups, group_by)
            names = grouped_split(keys, groups, {"val": val, "test": test}, seed)
        else:
            names = stratified_split(keys, {"val": val, "test": test}, seed)
        if split_file is not None:
            payload = {
                "seed": seed,
                "group_by": group_by,
                "volumes": spec.volumes,
                "slice_axis": spec.slice_axis,
                "val_fraction": val,
                "test_fraction": test,
                "root": str(spec.root),
                "splits": {n: [r for r, m in zip(rel, names, strict=True) if m == n] for n in SPLITS},
            }
            split_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = split_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
            tmp.replace(split_file)
    spec.splits = {n: [s for s, m in zip(samples, names, strict=True) if m == n] for n in SPLITS}
    spec.auto_split, spec.split_file = True, split_file
    return spec


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
