"""Read COCO-JSON detection annotations into `BoxSample`s, collecting every problem by file and annotation id.

Boxes are COCO `[x, y, width, height]` in pixels and become xyxy. Categories keep their original ids in
`category_ids` (results are written back with them) and are numbered 0..K-1 in id order. Fixed here, with
a warning: boxes sticking out of the image (clipped), boxes of zero or negative area and crowd regions
(`iscrowd: 1`, left out: dinotune trains and scores single objects). Errors: a file that is not COCO,
annotations naming an unknown image or category, malformed entries, images that are not on disk.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.data.box_layouts import coco_files
from dinotune.data.box_records import BoxProblem, BoxSample, clip_box, empty_boxes
from dinotune.data.decode import is_listed_image
from dinotune.errors import DataError


def read_coco(root: Path) -> tuple[list[str], list[int], dict[str, list[BoxSample]], list[BoxProblem]]:
    """Classes, their COCO ids, the samples of each split found in annotations/, and the problems."""
    files = coco_files(root)
    if not files:
        raise DataError(f"{root / 'annotations'}: no train/val/test .json file (e.g. annotations/train.json)")
    problems: list[BoxProblem] = []
    raw = {split: _load(path) for split, path in files.items()}
    categories: dict[int, str] = {}
    for split, path in files.items():
        _merge_categories(categories, raw[split], path)
    if not categories:
        raise DataError(f"{files[next(iter(files))]}: no 'categories'; list them as {{'id': 1, 'name': 'cat'}}")
    ids = sorted(categories)
    index = {cid: i for i, cid in enumerate(ids)}
    splits = {split: _read_split(root, split, path, raw[split], index, problems) for split, path in files.items()}
    return [categories[c] for c in ids], ids, splits, problems


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({str(exc).splitlines()[0]}); fix or re-export the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO file; expected an object with 'images', 'annotations' and 'categories'")
    return data


def _merge_categories(categories: dict[int, str], data: dict[str, Any], path: Path) -> None:
    for n, cat in enumerate(data.get("categories") or []):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or "name" not in cat:
            raise DataError(f"{path}: categories[{n}] needs an integer 'id' and a 'name'")
        cid, name = int(cat["id"]), str(cat["name"])
        if categories.get(cid, name) != name:
            raise DataError(
                f"{path}: category id {cid} is {name!r} here but {categories[cid]!r} in another split; "
                "use the same categories in every annotation file"
            )
        categories[cid] = name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_split(
    root: Path, split: str, path: Path, data: dict[str, Any], index: dict[int, int], problems: list[BoxProblem]
) -> list[BoxSample]:
    images = _images(path, data["images"], problems)
    boxes: dict[int, list[tuple[list[float], int]]] = {i: [] for i in images}
    crowd = 0
    for n, ann in enumerate(data.get("annotations") or []):
        if isinstance(ann, dict) and ann.get("iscrowd"):
            crowd += 1
            continue
        found = _annotation(path, n, ann, images, index, problems)
        if found is not None:
            boxes[found[0]].append(found[1:])
    if crowd:
        problems.append(
            BoxProblem(
                "warning",
                "crowd",
                f"{path.name}: {crowd} crowd region(s) (iscrowd: 1) left out; dinotune trains and scores single"
                " objects",
                path,
            )
        )
    folders = _image_folders(root, split, path)
    samples = []
    for image_id, img in images.items():
        file = _resolve(folders, str(img["file_name"]))
        if file is None:
            problems.append(
                BoxProblem(
                    "error",
                    "missing_image",
                    f"{path.name}: image {image_id} {img['file_name']!r} is not in "
                    f"{folders[0].relative_to(root).as_posix()}/; "
                    "add the file or delete its entry",
                    path,
                )
            )
            continue
        b, lab = empty_boxes()
        if boxes[image_id]:
            b = np.asarray([bx for bx, _ in boxes[image_id]], np.float32)
            lab = np.asarray([c for _, c in boxes[image_id]], np.int64)
        samples.append(BoxSample(file, b, lab, image_id, int(img.get("width") or 0), int(img.get("height") or 0)))
    _unlisted(root, path, samples, problems)
    return samples


def _unlisted(root: Path, path: Path, samples: list[BoxSample], problems: list[BoxProblem]) -> None:
    """Images beside the listed ones that the annotation file does not list (a forgotten export): not used."""
    listed = {s.path for s in samples}
    for folder in sorted({s.path.parent for s in samples} - {root}):  # the root itself holds other things too
        for image in sorted(p for p in folder.iterdir() if p.is_file() and is_listed_image(p) and p not in listed):
            if not image.name.startswith("."):
                where = image.relative_to(root).as_posix() if image.is_relative_to(root) else str(image)
                problems.append(
                    BoxProblem(
                        "warning",
                        "unlisted_image",
                        f"{where} is not listed in {path.name}; it is not used (annotate it, or move it out)",
                        image,
                    )
                )


def _images(path: Path, entries: list[Any], problems: list[BoxProblem]) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    for n, img in enumerate(entries):
        if not isinstance(img, dict) or not _is_int(img.get("id")) or not img.get("file_name"):
            problems.append(
                BoxProblem(
                    "error", "malformed", f"{path.name}: images[{n}] needs an integer 'id' and a 'file_name'", path
                )
            )
        elif img["id"] in images:
            problems.append(
                BoxProblem(
                    "error",
                    "duplicate_id",
                    f"{path.name}: image id {img['id']} is used twice; ids must be unique",
                    path,
                )
            )
        else:
            images[img["id"]] = img
    _duplicate_files(path, images, problems)
    return images


def _duplicate_files(path: Path, images: dict[int, dict[str, Any]], problems: list[BoxProblem]) -> None:
    """One file listed under two ids: its boxes are split between two samples, each of which misses the other's."""
    first: dict[str, int] = {}
    for image_id, img in images.items():
        name = str(img["file_name"])
        if name in first:
            message = f"{path.name}: {name!r} is listed as image {first[name]} and image {image_id}; merge the entries"
            problems.append(BoxProblem("error", "duplicate_file", message, path))
        first.setdefault(name, image_id)


def _annotation(
    path: Path,
    n: int,
    ann: Any,
    images: dict[int, dict[str, Any]],
    index: dict[int, int],
    problems: list[BoxProblem],
) -> tuple[int, list[float], int] | None:
    """(image id, xyxy box, class index) of one annotation, or None (its problem recorded)."""
    where = f"{path.name}: annotation {ann.get('id', f'#{n}') if isinstance(ann, dict) else f'#{n}'}"

    def problem(severity: str, code: str, text: str) -> None:
        problems.append(BoxProblem(severity, code, f"{where}: {text}", path))

    bbox = ann.get("bbox") if isinstance(ann, dict) else None
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_finite(v) for v in bbox):
        problem("error", "malformed", "needs 'image_id', 'category_id' and 'bbox': [x, y, width, height]")
        return None
    if ann.get("image_id") not in images:
        problem("error", "unknown_image", f"image_id {ann.get('image_id')!r} is not in 'images'; fix or delete it")
        return None
    if ann.get("category_id") not in index:
        problem(
            "error",
            "unknown_category",
            f"category_id {ann.get('category_id')!r} is not in 'categories' (ids {sorted(index)}); "
            "add the category or fix the annotation",
        )
        return None
    img = images[ann["image_id"]]
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        problem("warning", "empty_box", f"box {bbox} on {img['file_name']} has no area; left out (fix or delete it)")
        return None
    width, height = int(img.get("width") or 0), int(img.get("height") or 0)
    box, clipped = clip_box([x, y, x + w, y + h], width, height)
    if box[2] <= box[0] or box[3] <= box[1]:
        problem("warning", "box_outside", f"box {bbox} lies outside the {width}x{height} image; left out")
        return None
    if clipped:
        shown = [round(v, 1) for v in box]
        problem(
            "warning", "box_out_of_bounds", f"box {bbox} sticks out of the {width}x{height} image; clipped to {shown}"
        )
    return ann["image_id"], box, index[ann["category_id"]]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _image_folders(root: Path, split: str, path: Path) -> list[Path]:
    """Where `file_name`s are looked up, first first: images/<split>/, images/<file stem>/ (train2017), images/,
    the annotation file's folder (Roboflow), <split>/, the root."""
    stem = path.stem.removeprefix("instances_")
    folders = [root / "images" / split, root / "images" / stem, root / "images", path.parent, root / split, root]
    return list(dict.fromkeys(folders))


def _resolve(folders: list[Path], name: str) -> Path | None:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        return None  # paths are kept inside the dataset folder
    return next((f / rel for f in folders if (f / rel).is_file()), None)
