"""Read YOLO-txt detection labels into `BoxSample`s, collecting every problem by file and line.

Each image `images/<split>/a.jpg` has `labels/<split>/a.txt`, one object a line: `class cx cy w h`, all
but the class normalised to [0, 1] (a polygon `class x1 y1 x2 y2 ...`, the segmentation flavour, becomes
its bounding box). Class names come from `data.yaml` (`names:` a list or an {id: name} mapping) or
`classes.txt` (one a line). An image without a label file is a background image (no objects), as YOLO
tools treat it; the image size needed to turn normalised values into pixels is read from the file header.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dinotune.data.box_layouts import list_split_images, yolo_folders
from dinotune.data.box_records import BoxProblem, BoxSample, clip_box, empty_boxes
from dinotune.data.decode import image_info
from dinotune.errors import DataError


def yolo_names(root: Path) -> list[str] | None:
    """Class names from data.yaml / dataset.yaml or classes.txt, None when neither exists."""
    for name in ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml"):
        if (root / name).is_file():
            return _yaml_names(root / name)
    if (root / "classes.txt").is_file():
        lines = (root / "classes.txt").read_text(encoding="utf-8").splitlines()
        return [s.strip() for s in lines if s.strip()]
    return None


def _yaml_names(path: Path) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(names, dict) and names and all(isinstance(k, int) for k in names):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: 'names' ids must be 0..{len(names) - 1}, got {sorted(names)}")
        return [str(names[i]) for i in range(len(names))]
    raise DataError(f"{path}: needs 'names:' as a list of class names or a mapping {{0: name, 1: name}}")


def read_yolo(root: Path) -> tuple[list[str], list[int], dict[str, list[BoxSample]], list[BoxProblem]]:
    """Classes, their YOLO numbers (0..K-1), the samples of each split and the problems found."""
    names = yolo_names(root)
    problems: list[BoxProblem] = []
    parsed: dict[str, list[tuple[Path, Path, list[tuple[int, list[float], int]]]]] = {}
    top = -1
    folders = yolo_folders(root)
    for split, (images, labels) in folders.items():
        entries = []
        for image in list_split_images(images):
            label = labels / image.relative_to(images).with_suffix(".txt")
            objects = _read_label(label, image, root, problems)
            top = max([top, *(c for c, _, _ in objects)])
            entries.append((image, label, objects))
        parsed[split] = entries
    used = {lab for entries in parsed.values() for _, lab, _ in entries}
    _orphan_labels(root, [labels for _, labels in folders.values()], used, problems)
    if names is None:
        names = [str(i) for i in range(top + 1)]
        problems.append(
            BoxProblem("warning", "no_class_names", f"{root}: no data.yaml or classes.txt; classes are named 0..{top}")
        )
    image_id = 0
    splits: dict[str, list[BoxSample]] = {}
    for split, entries in parsed.items():
        samples = []
        for image, label, objects in entries:
            image_id += 1
            sample = _to_sample(image, label, objects, image_id, names, root, problems)
            if sample is not None:
                samples.append(sample)
        splits[split] = samples
    return names, list(range(len(names))), splits, problems


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _read_label(label: Path, image: Path, root: Path, problems: list[BoxProblem]) -> list[tuple[int, list[float], int]]:
    """(class, normalised cx cy w h, line number) per object; malformed lines recorded and skipped."""
    if not label.is_file():
        problems.append(
            BoxProblem(
                "warning",
                "no_label_file",
                f"{_rel(image, root)} has no {_rel(label, root)}; used as a background image (no objects)",
                image,
            )
        )
        return []
    objects = []
    for n, line in enumerate(label.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parsed = _parse_line(line)
        if isinstance(parsed, str):
            problems.append(BoxProblem("error", "malformed", f"{_rel(label, root)}:{n}: {parsed}", label))
        elif parsed is not None:
            objects.append((*parsed, n))
    return objects


def _parse_line(line: str) -> tuple[int, list[float]] | str | None:
    """(class, [cx, cy, w, h]) of one line, None for a blank line, or what is wrong with it."""
    tokens = line.split()
    if not tokens:
        return None
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        return f"not numbers: {line.strip()!r}; write 'class cx cy w h'"
    if not values[0].is_integer() or values[0] < 0:
        return f"class {tokens[0]!r} is not a class number (0, 1, ...)"
    coords = values[1:]
    if not all(math.isfinite(v) for v in coords) or not (
        len(coords) == 4 or (len(coords) >= 6 and len(coords) % 2 == 0)
    ):
        return f"expected 'class cx cy w h' (or a polygon 'class x1 y1 x2 y2 ...'), got {line.strip()!r}"
    if max(coords) > 1.01:
        return (
            f"values {coords} are not normalised to [0, 1]; divide x and width by the image width, "
            "y and height by its height"
        )
    if len(coords) > 4:
        xs, ys = coords[0::2], coords[1::2]
        coords = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
    return int(values[0]), coords


def _orphan_labels(root: Path, folders: list[Path], used: set[Path], problems: list[BoxProblem]) -> None:
    for label in sorted({p for folder in folders if folder.is_dir() for p in folder.rglob("*.txt")}):
        if label not in used and not label.name.startswith("."):
            problems.append(
                BoxProblem(
                    "warning",
                    "label_without_image",
                    f"{_rel(label, root)} has no image of the same name; it is not used (add the image or delete it)",
                    label,
                )
            )


def _to_sample(
    image: Path,
    label: Path,
    objects: list[tuple[int, list[float], int]],
    image_id: int,
    names: list[str],
    root: Path,
    problems: list[BoxProblem],
) -> BoxSample | None:
    """Pixel boxes of one image; None (its problem recorded) when its header cannot be read."""
    try:
        info = image_info(image)
    except DataError as exc:
        problems.append(BoxProblem("error", "unreadable", str(exc), image))
        return None
    width, height = info.width, info.height
    boxes, labels = [], []
    for cls, (cx, cy, w, h), line in objects:
        where = f"{_rel(label, root)}:{line}"
        if cls >= len(names):
            problems.append(_unknown_class(where, cls, names, label))
            continue
        if w <= 0 or h <= 0:
            problems.append(
                BoxProblem("warning", "empty_box", f"{where}: box has no area (w={w}, h={h}); left out", label)
            )
            continue
        raw = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        box, clipped = clip_box(raw, width, height)
        if clipped:
            shown = [round(v, 1) for v in box]
            problems.append(
                BoxProblem(
                    "warning",
                    "box_out_of_bounds",
                    f"{where}: box sticks out of the {width}x{height} image; clipped to {shown}",
                    label,
                )
            )
        boxes.append(box)
        labels.append(cls)
    if not boxes:
        b, lab = empty_boxes()
        return BoxSample(image, b, lab, image_id, width, height)
    return BoxSample(image, np.asarray(boxes, np.float32), np.asarray(labels, np.int64), image_id, width, height)


def _unknown_class(where: str, cls: int, names: list[str], label: Path) -> BoxProblem:
    known = f"0..{len(names) - 1}" if names else "none"
    return BoxProblem(
        "error",
        "unknown_category",
        f"{where}: class {cls} is not a known class ({known}); add its name to data.yaml or fix the line",
        label,
    )
