"""The records every layout is described by: `Sample` and `DatasetSpec`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def split_subfolders(folder: Path) -> dict[str, Path]:
    """{split: subfolder} for the subfolders of `folder` named as a split (or an alias: valid, testing...)."""
    found = (d for d in sorted(folder.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_ALIASES)
    return {SPLIT_ALIASES[d.name.lower()]: d for d in found}


@dataclass
class Sample:
    """One item: an image path, its label (class index, list of indices, mask path or None) and, from a
    CSV column named by `data.group_by`, the group it belongs to (a patient, a study)."""

    path: Path
    label: int | list[int] | Path | None = None
    group: str | None = None


@dataclass
class DatasetSpec:
    """Uniform description of a dataset, whatever its layout on disk."""

    task: str  # "classify" | "segment" | "unlabelled"
    layout: str
    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    multilabel: bool = False
    colours: list[tuple[int, int, int]] | None = None
    auto_split: bool = False  # True if the split was computed here rather than read from the layout
    split_file: Path | None = None
    volumes: str = "middle"  # "slices": NIfTI volumes were cut into one sample per slice along slice_axis
    slice_axis: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)
