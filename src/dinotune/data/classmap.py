"""Class maps (names, colours) and class-id mappings read from YAML/JSON, for masks and labels."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.errors import DataError


@dataclass
class ClassMap:
    names: list[str]
    colours: list[tuple[int, int, int]] | None = field(default=None)


def load_class_map(path: Path | str) -> ClassMap:
    """Read class names (and optional RGB colours) from YAML/JSON.

    Accepts a list of names, {id: name}, a list of {name, color}, or any of these under `classes:`.
    """
    data = _read_structured(Path(path))
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if isinstance(data, dict):
        try:
            data = [data[k] for k in sorted(data, key=int)]
        except (TypeError, ValueError):
            raise DataError(f"{path}: class map keys must be class ids (0, 1, ...)") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: class map must be a list of class names or {{id: name}}")
    names, colours = [], []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            names.append(str(item.get("name", i)))
            colour = item.get("color", item.get("colour"))
            if colour is not None:
                if not (isinstance(colour, list) and len(colour) == 3):
                    raise DataError(f"{path}: class {i} colour must be [r, g, b]")
                colours.append(tuple(int(c) for c in colour))
        else:
            names.append(str(item))
    if colours and len(colours) != len(names):
        raise DataError(f"{path}: give a colour for every class or for none")
    return ClassMap(names, colours or None)


def load_class_mapping(mapping: Path | str | dict[int, int]) -> dict[int, int]:
    """Read a source-id -> target-id mapping (dict or YAML/JSON file, optionally under `mapping:`)."""
    data = mapping if isinstance(mapping, dict) else _read_structured(Path(mapping))
    if isinstance(data, dict) and isinstance(data.get("mapping"), dict):
        data = data["mapping"]
    try:
        return {int(k): int(v) for k, v in data.items()}
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{mapping}: class mapping must be {{source_id: target_id}} with integers") from None


def build_lut(mapping: dict[int, int], ignore_index: int = 255, size: int = 256) -> np.ndarray:
    """Lookup table applying a class mapping; unlisted source ids and ignore_index map to ignore_index."""
    lut = np.full(max(size, max(mapping, default=0) + 1), ignore_index, dtype=np.int64)
    for src, dst in mapping.items():
        if src < 0:
            raise DataError(f"class mapping source id {src} is negative")
        lut[src] = dst
    lut[ignore_index] = mapping.get(ignore_index, ignore_index)
    return lut


def _read_structured(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def rgb_to_index(rgb: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """Turn a colour-coded mask into indices using the class map's colours (unknown -> 255)."""
    key = (rgb[:, :, 0].astype(np.int64) << 16) | (rgb[:, :, 1].astype(np.int64) << 8) | rgb[:, :, 2]
    out = np.full(key.shape, 255, dtype=np.uint8)
    for idx, (r, g, b) in enumerate(colours):
        out[key == ((r << 16) | (g << 8) | b)] = idx
    return out
