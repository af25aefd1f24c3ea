"""Where a detection dataset keeps its files: COCO-JSON or YOLO-txt, found from the folder alone.

COCO:  annotations/{train,val,test}.json (or instances_train2017.json, ...) + images/[<split>/]<file_name>
       or Roboflow's <split>/_annotations.coco.json with the images beside it
YOLO:  images/[<split>/]*.jpg|png + labels/[<split>/]*.txt (class cx cy w h, normalised), or Roboflow's
       <split>/images/ + <split>/labels/, with data.yaml or classes.txt naming the classes
Kept free of the other data modules so `formats.detect_layout` can ask it without an import cycle.
"""

from __future__ import annotations

import re
from pathlib import Path

from dinotune.data.decode import is_listed_image
from dinotune.data.spec import SPLIT_ALIASES, split_subfolders

ROBOFLOW_COCO = "_annotations.coco.json"
_COCO_NAME = re.compile(r"^(?:instances_)?(?P<split>[a-z]+?)(?:\d{4})?$", re.IGNORECASE)


def coco_files(root: Path) -> dict[str, Path]:
    """The COCO annotation file of each split: annotations/train.json, instances_val2017.json, ..., or
    Roboflow's <split>/_annotations.coco.json beside the split's images."""
    folder = root / "annotations"
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        match = _COCO_NAME.match(path.stem)
        split = SPLIT_ALIASES.get(match["split"].lower()) if match else None
        if split is not None and split not in found:
            found[split] = path
    for split, sub in split_folders(root).items():
        if split != "all" and split not in found and (sub / ROBOFLOW_COCO).is_file():
            found[split] = sub / ROBOFLOW_COCO
    return found


def list_split_images(folder: Path) -> list[Path]:
    """Images under `folder`, recursively and sorted, hidden files and folders skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and is_listed_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def split_folders(folder: Path) -> dict[str, Path]:
    """{split: subfolder} for train/val/test (and their aliases) inside `folder`; {"all": folder} if none."""
    if not folder.is_dir():
        return {}
    return split_subfolders(folder) or {"all": folder}


def yolo_folders(root: Path) -> dict[str, tuple[Path, Path]]:
    """{split: (images folder, labels folder)}: images/<split>/ + labels/<split>/ (Ultralytics), or
    <split>/images/ + <split>/labels/ (Roboflow's export); {"all": (images/, labels/)} without splits."""
    if (root / "images").is_dir():
        images = root / "images"
        return {split: (d, root / "labels" / d.relative_to(images)) for split, d in split_folders(images).items()}
    pairs = {split: (d / "images", d / "labels") for split, d in split_folders(root).items() if split != "all"}
    return {split: pair for split, pair in pairs.items() if pair[0].is_dir()}


def is_yolo(root: Path) -> bool:
    """Image folders beside label folders holding .txt files (see `yolo_folders`)."""
    return any(labels.is_dir() and any(labels.rglob("*.txt")) for _, labels in yolo_folders(root).values())


def detection_layout(root: Path) -> str | None:
    """ "coco" or "yolo" when `root` is laid out as a detection dataset, else None."""
    if not root.is_dir():
        return None
    if coco_files(root):
        return "coco"
    return "yolo" if is_yolo(root) else None
