"""Dataset layouts: detect which one a folder uses and describe it uniformly as a `DatasetSpec`.

Supported layouts (see docs/data.md for example trees):
  imagefolder  - [train|val|test/]<class>/<image>
  csv          - a CSV with `path,label` (labels may be `a;b` for multi-label) or one 0/1 column per label
  json         - annotations/{train,val,test}_annotations.json, each a list of {file_name, label}
  segmentation - images/ + masks/ with matching stems (optionally with split subfolders)
  unlabelled   - any folder tree of images
  coco, yolo   - detection boxes (COCO-JSON, YOLO-txt), read by `dinotune.data.boxes` (docs/detection.md)
Data without split folders is split here (stratified, seeded) and the split can be written to a file
so a run is reproducible even if files are later added.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from dinotune.data.box_layouts import detection_layout
from dinotune.data.decode import is_listed_image, load_class_map
from dinotune.data.spec import SPLIT_ALIASES, DatasetSpec, Sample, split_subfolders
from dinotune.data.splits import apply_split
from dinotune.errors import DataError

log = logging.getLogger(__name__)

Pairing = tuple[list[tuple[Path, Path]], list[Path], list[Path]]  # pairs, lonely images, lonely targets
PATH_KEYS = ("path", "file_name", "filename", "file", "image", "image_path", "img")
LABEL_KEYS = ("label", "labels", "category", "class", "class_name", "target")
MASK_SUFFIXES = ("_mask", "-mask", "_label", "_labels", "_gt", "_seg")
CLASS_MAP_NAMES = ("classes.yaml", "classes.yml", "classes.json", "class_map.yaml", "class_map.json")


def list_images(folder: Path) -> list[Path]:
    """All image files under `folder`, recursively, sorted (hidden files and folders skipped)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and is_listed_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _class_dirs(folder: Path) -> list[Path]:
    return [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def _find_csv(root: Path) -> Path | None:
    csvs = sorted(p for p in root.glob("*.csv") if not p.name.startswith("."))
    for name in ("labels.csv", "annotations.csv", "train.csv"):
        if root / name in csvs:
            return root / name
    return csvs[0] if len(csvs) == 1 else None


def _seg_pairs(root: Path) -> tuple[Path, Path] | None:
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return root / "images", root / "masks"
    return None


def detect_layout(path: Path | str, task: str | None = None) -> str:
    """Name the layout of `path`: imagefolder, csv, json, segmentation or unlabelled.

    `task="unlabelled"` forces the unlabelled layout, since any image tree can be read that way.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root} does not exist; check the dataset path")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"{root} is a file; pass a dataset folder or a CSV file")
    if task == "unlabelled":
        return "unlabelled"
    if (boxes := detection_layout(root)) is not None:  # asked for another task: load_dataset says it is boxes
        return boxes
    if task == "detect":
        raise DataError(f"{root}: no annotations/train.json (COCO) or images/ + labels/ (YOLO); see docs/detection.md")
    if (root / "annotations").is_dir() and any((root / "annotations").glob("*_annotations.json")):
        return "json"
    splits = split_subfolders(root)
    if _seg_pairs(root) or any(_seg_pairs(d) for d in splits.values()):
        return "segmentation"
    if _find_csv(root) is not None:
        return "csv"
    loose = [p for p in root.iterdir() if p.is_file() and is_listed_image(p)]
    for folder in splits.values() or ([] if loose else [root]):
        if any(list_images(d) for d in _class_dirs(folder)):
            return "imagefolder"
    if list_images(root):
        return "unlabelled"
    raise DataError(
        f"no images found under {root}; expected class folders, images/+masks/, a CSV, "
        "annotations/*_annotations.json or any tree of images (see docs/data.md)"
    )


def load_dataset(
    root: Path | str,
    task: str | None = None,
    layout: str = "auto",
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    split_file: Path | str | None = None,
    csv_file: Path | str | None = None,
    class_map: Path | str | None = None,
    auto_split: bool = True,
    group_by: str | None = None,
    volumes: str = "middle",
    slice_axis: int | None = None,
) -> DatasetSpec:
    """Read any supported layout into a DatasetSpec.

    Without split folders/columns the samples are split here (stratified by label, seeded). If
    `split_file` is given the split is read from it when it exists, or written to it otherwise.
    `auto_split=False` leaves unsplit data in a single split named "all" (used by `data check`).
    `group_by` (a DICOM keyword or a CSV column) keeps each group's images in one split.
    `volumes="slices"` makes every slice of a NIfTI volume (along `slice_axis`) a sample of its own.
    """
    root = Path(root)
    layout = detect_layout(root, task) if layout == "auto" else layout
    readers = {
        "imagefolder": _read_imagefolder,
        "csv": _read_csv,
        "json": _read_json,
        "segmentation": _read_segmentation,
        "unlabelled": _read_unlabelled,
        **dict.fromkeys(("coco", "yolo"), _read_boxes),
    }
    if layout not in readers:
        raise DataError(f"unknown layout {layout!r}; use one of: auto, {', '.join(readers)}")
    spec = _read_csv(root, csv_file, group_by) if layout == "csv" else readers[layout](root)
    if task is not None and task != spec.task and not (task == "unlabelled"):
        raise DataError(f"{root} is laid out as '{spec.layout}' ({spec.task} data), but task={task!r} was asked")
    if task == "unlabelled" and spec.task != "unlabelled":
        spec.task = "unlabelled"
    cmap_path = (
        Path(class_map)
        if class_map
        else next((root / n for n in CLASS_MAP_NAMES if root.is_dir() and (root / n).is_file()), None)
    )
    if cmap_path is not None and spec.task == "segment":
        cmap = load_class_map(cmap_path)
        spec.classes, spec.colours = cmap.names, cmap.colours
    if volumes == "slices":
        from dinotune.data.volumes import expand_volumes

        spec = expand_volumes(spec, slice_axis)
    if auto_split and set(spec.splits) == {"all"} and spec.task != "unlabelled":
        split_path = Path(split_file) if split_file else None
        spec = apply_split(spec, val_fraction, test_fraction, seed, split_path, group_by)
    for name, samples in spec.splits.items():
        if not samples:
            log.warning("split %r of %s is empty", name, root)
    return spec


def _read_imagefolder(root: Path) -> DatasetSpec:
    folders = split_subfolders(root) or {"all": root}
    classes = sorted({d.name for f in folders.values() for d in _class_dirs(f)})
    if not classes:
        raise DataError(f"{root}: no class folders found; put images in <class>/ subfolders")
    index = {c: i for i, c in enumerate(classes)}
    splits = {
        name: [Sample(p, index[d.name]) for d in _class_dirs(f) for p in list_images(d)] for name, f in folders.items()
    }
    return DatasetSpec("classify", "imagefolder", root, classes, splits)


def _parse_labels(raw: list[Any], source: Path) -> tuple[list[str], list[int | list[int]], bool]:
    """Turn raw label values (names, ints, lists or 'a;b' strings) into class names and indices."""
    as_lists = [
        v
        if isinstance(v, list)
        else [s.strip() for s in str(v).split(";") if s.strip()]
        if isinstance(v, str) and ";" in v
        else [v]
        for v in raw
    ]
    multilabel = any(isinstance(v, list) for v in raw) or any(len(v) > 1 for v in as_lists)
    flat = [str(x).strip() for v in as_lists for x in v]
    if any(x == "" or x.lower() == "nan" for x in flat):
        raise DataError(f"{source}: some rows have an empty label; fill them in or remove the rows")
    numeric = bool(flat) and all(x.lstrip("-").isdigit() for x in flat)

    def norm(x: Any) -> str:
        return str(int(str(x).strip())) if numeric else str(x).strip()

    if numeric:
        top = max(int(x) for x in flat)
        if min(int(x) for x in flat) < 0:
            raise DataError(f"{source}: negative label; labels must be class names or ids >= 0")
        classes = [str(i) for i in range(top + 1)]
    else:
        classes = sorted(set(flat))
    index = {c: i for i, c in enumerate(classes)}
    labels = [sorted({index[norm(x)] for x in v}) for v in as_lists]
    return classes, [v if multilabel else v[0] for v in labels], multilabel


def _resolve(root: Path, name: str, split: str | None = None) -> Path:
    """Find an annotated file: absolute, relative to root, root/images, or the split folder."""
    p = Path(name)
    if p.is_absolute():
        return p
    candidates = [root / p, root / "images" / p]
    if split:
        candidates += [root / split / p, root / "images" / split / p]
    return next((c for c in candidates if c.exists()), root / p)


def _read_csv(root: Path, csv_file: Path | str | None = None, group_by: str | None = None) -> DatasetSpec:
    if root.is_file():
        root, table = root.parent, root
    else:
        table = (root / csv_file) if csv_file else _find_csv(root)
        if table is None or not table.is_file():
            raise DataError(f"{root}: no CSV annotation file found; pass data.csv_file")
    with open(table, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{table}: CSV has no rows; expected a header like 'path,label'")
    cols = list(rows[0].keys())
    path_col = next((c for c in cols if c.strip().lower() in PATH_KEYS), None)
    if path_col is None:
        raise DataError(f"{table}: no image column; name one of: {', '.join(PATH_KEYS)} (found {cols})")
    split_col = next((c for c in cols if c.strip().lower() == "split"), None)
    group_col = next((c for c in cols if group_by and c.strip() == group_by), None)
    label_col = next((c for c in cols if c.strip().lower() in LABEL_KEYS), None)
    if label_col is not None:
        classes, labels, multilabel = _parse_labels([r[label_col] for r in rows], table)
    else:  # one 0/1 column per label
        classes = [c for c in cols if c not in (path_col, split_col, group_col)]
        if not classes:
            raise DataError(f"{table}: no label column; add 'label' or one 0/1 column per class")
        labels, multilabel = [], True
        for n, r in enumerate(rows, start=2):
            bad = [c for c in classes if r[c].strip() not in ("0", "1", "0.0", "1.0")]
            if bad:
                raise DataError(f"{table}: line {n}: column {bad[0]!r} must be 0 or 1, got {r[bad[0]]!r}")
            labels.append([i for i, c in enumerate(classes) if float(r[c]) == 1.0])
    splits: dict[str, list[Sample]] = {}
    for r, lab in zip(rows, labels, strict=False):
        split = SPLIT_ALIASES.get(r[split_col].strip().lower(), "all") if split_col else "all"
        group = (r[group_col] or "").strip() or None if group_col else None
        splits.setdefault(split, []).append(Sample(_resolve(root, r[path_col].strip(), split), lab, group))
    return DatasetSpec("classify", "csv", root, classes, splits, multilabel=multilabel)


def _read_json(root: Path) -> DatasetSpec:
    raw: dict[str, list[tuple[str, Any]]] = {}
    for f in sorted((root / "annotations").glob("*_annotations.json")):
        split = SPLIT_ALIASES.get(f.name.removesuffix("_annotations.json").lower())
        if split is None:
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{f}: invalid JSON ({exc})") from None
        if isinstance(data, dict):
            data = data.get("annotations", data.get("images"))
        if not isinstance(data, list):
            raise DataError(f"{f}: expected a list of {{file_name, label}} objects")
        items = []
        for i, obj in enumerate(data):
            pk = next((k for k in PATH_KEYS if isinstance(obj, dict) and k in obj), None)
            lk = next((k for k in LABEL_KEYS if isinstance(obj, dict) and k in obj), None)
            if pk is None or lk is None:
                raise DataError(
                    f"{f}: entry {i} needs a file key ({'/'.join(PATH_KEYS[:4])}) "
                    f"and a label key ({'/'.join(LABEL_KEYS[:4])})"
                )
            items.append((str(obj[pk]), obj[lk]))
        raw[split] = items
    if not raw:
        raise DataError(f"{root / 'annotations'}: no train/val/test_annotations.json files")
    order = [s for s in raw]
    classes, labels, multilabel = _parse_labels([lab for s in order for _, lab in raw[s]], root / "annotations")
    splits, k = {}, 0
    for s in order:
        splits[s] = [Sample(_resolve(root, name, s), labels[k + i]) for i, (name, _) in enumerate(raw[s])]
        k += len(raw[s])
    if set(splits) == {"train"}:
        splits = {"all": splits["train"]}
    return DatasetSpec("classify", "json", root, classes, splits, multilabel=multilabel)


def mask_key(path: Path, folder: Path) -> str:
    """Matching key of an image or mask: relative path without extension or mask suffix."""
    rel = path.relative_to(folder).as_posix()
    rel = rel[: -len(".nii.gz")] if rel.lower().endswith(".nii.gz") else str(Path(rel).with_suffix(""))
    for suffix in MASK_SUFFIXES:
        if rel.endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def segmentation_pairs(root: Path) -> dict[str, Pairing]:
    """Per split: (image, mask) pairs, images without a mask, masks without an image."""
    splits = split_subfolders(root)
    groups: dict[str, tuple[Path, Path]] = {}
    if splits and any(_seg_pairs(d) for d in splits.values()):
        groups = {s: p for s, d in splits.items() if (p := _seg_pairs(d))}
    elif (pair := _seg_pairs(root)) is not None:
        img_splits, mask_splits = split_subfolders(pair[0]), split_subfolders(pair[1])
        groups = (
            {s: (d, mask_splits.get(s, pair[1] / d.name)) for s, d in img_splits.items()}
            if img_splits
            else {"all": pair}
        )
    if not groups:
        raise DataError(f"{root}: expected images/ and masks/ folders (optionally inside train/ val/)")
    return {split: match_by_key(img_dir, mask_dir) for split, (img_dir, mask_dir) in groups.items()}


def match_by_key(image_dir: Path, target_dir: Path) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """(image, target) pairs of the same `mask_key`, images without a target, targets without an image."""
    images = {mask_key(p, image_dir): p for p in list_images(image_dir)}
    targets = {mask_key(p, target_dir): p for p in list_images(target_dir)} if target_dir.is_dir() else {}
    return (
        [(images[k], targets[k]) for k in sorted(images) if k in targets],
        [images[k] for k in sorted(images) if k not in targets],
        [targets[k] for k in sorted(targets) if k not in images],
    )


def paired_samples(found: dict[str, Pairing], root: Path, target: str) -> dict[str, list[Sample]]:
    """Per split, the samples of the matched pairs; one warning each for the unmatched images and `target`s."""
    splits = {}
    for split, (pairs, lonely_images, lonely_targets) in found.items():
        if lonely_images:
            log.warning(
                "%d image(s) in %s have no %s and are left out, e.g. %s",
                len(lonely_images),
                root,
                target,
                lonely_images[0],
            )
        if lonely_targets:
            log.warning("%d %s(s) in %s have no image, e.g. %s", len(lonely_targets), target, root, lonely_targets[0])
        splits[split] = [Sample(image, target_path) for image, target_path in pairs]
    return splits


def _read_segmentation(root: Path) -> DatasetSpec:
    return DatasetSpec("segment", "segmentation", root, [], paired_samples(segmentation_pairs(root), root, "mask"))


def _read_unlabelled(root: Path) -> DatasetSpec:
    images = list_images(root)
    if not images:
        raise DataError(f"no images found under {root}")
    return DatasetSpec("unlabelled", "unlabelled", root, [], {"all": [Sample(p) for p in images]})


def _read_boxes(root: Path) -> DatasetSpec:
    """A detection dataset's images (task "detect"), for what needs only the files (`data stats`); boxes are
    read by `dinotune.data.boxes.load_detection`."""
    from dinotune.data.boxes import read_detection

    boxes = read_detection(root)
    splits = {name: [Sample(s.path) for s in samples] for name, samples in boxes.splits.items()}
    return DatasetSpec("detect", boxes.layout, root, boxes.classes, splits)
