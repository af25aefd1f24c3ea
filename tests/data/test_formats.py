from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dinotune.data.decode import build_lut, load_class_map, load_class_mapping
from dinotune.data.formats import detect_layout, load_dataset
from dinotune.errors import DataError
from tests.data.conftest import rgb, save, write_palette_mask


def _imagefolder(root: Path, counts: dict[str, int], split: str | None = None) -> Path:
    for cls, n in counts.items():
        for i in range(n):
            folder = root / split / cls if split else root / cls
            save(folder / f"{cls}_{i:03d}.png", rgb(8, 8, seed=i))
    return root


def test_detect_imagefolder_with_and_without_splits(tmp_path):
    split_root = tmp_path / "a"
    for split in ("train", "val"):
        _imagefolder(split_root, {"cat": 2, "dog": 2}, split)
    assert detect_layout(split_root) == "imagefolder"
    spec = load_dataset(split_root)
    assert spec.task == "classify" and spec.classes == ["cat", "dog"]
    assert set(spec.splits) == {"train", "val"} and len(spec.splits["train"]) == 4 and not spec.auto_split
    flat = _imagefolder(tmp_path / "b", {"cat": 3, "dog": 3})
    assert detect_layout(flat) == "imagefolder"
    assert set(load_dataset(flat).splits) == {"train", "val", "test"}


def test_detect_csv_single_and_multilabel(tmp_path):
    root = tmp_path / "csv"
    for i in range(4):
        save(root / "img" / f"{i}.png", rgb(8, 8))
    (root / "labels.csv").write_text("path,label\n" + "".join(f"img/{i}.png,{'ab'[i % 2]}\n" for i in range(4)))
    assert detect_layout(root) == "csv"
    spec = load_dataset(root, auto_split=False)
    assert spec.classes == ["a", "b"] and not spec.multilabel
    assert [s.label for s in spec.splits["all"]] == [0, 1, 0, 1]

    multi = tmp_path / "multi"
    for i in range(3):
        save(multi / f"{i}.png", rgb(8, 8))
    (multi / "labels.csv").write_text("filename,cloud,water,road\n0.png,1,0,1\n1.png,0,0,0\n2.png,0,1,0\n")
    spec = load_dataset(multi, auto_split=False)
    assert spec.multilabel and spec.classes == ["cloud", "water", "road"]
    assert [s.label for s in spec.splits["all"]] == [[0, 2], [], [1]]
    (multi / "labels.csv").write_text("filename,cloud,water\n0.png,1,yes\n")
    with pytest.raises(DataError, match=r"labels\.csv: line 2: column 'water' must be 0 or 1"):
        load_dataset(multi)


def test_csv_with_split_column_and_semicolon_labels(tmp_path):
    root = tmp_path / "c"
    for i in range(4):
        save(root / f"{i}.png", rgb(8, 8))
    (root / "data.csv").write_text("image,labels,split\n0.png,x;y,train\n1.png,y,train\n2.png,x,valid\n3.png,y,test\n")
    spec = load_dataset(root)
    assert spec.multilabel and spec.classes == ["x", "y"]
    assert {k: len(v) for k, v in spec.splits.items()} == {"train": 2, "val": 1, "test": 1}
    assert spec.splits["train"][0].label == [0, 1]


def test_detect_json_annotations(tmp_path):
    root = tmp_path / "j"
    for split in ("train", "val"):
        for i in range(2):
            save(root / "images" / f"{split}_{i}.png", rgb(8, 8))
        items = [
            {"file_name": f"{split}_0.png", "category": "ok"},
            {"image": f"{split}_1.png", "label": "ng"},
        ]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}_annotations.json").write_text(json.dumps(items))
    assert detect_layout(root) == "json"
    spec = load_dataset(root)
    assert spec.classes == ["ng", "ok"] and set(spec.splits) == {"train", "val"}
    assert spec.splits["val"][0].path == root / "images" / "val_0.png" and spec.splits["val"][0].label == 1


def test_detect_segmentation_and_unlabelled(tmp_path):
    seg = tmp_path / "seg"
    for split in ("train", "val"):
        save(seg / "images" / split / "a.png", rgb(8, 8))
        write_palette_mask(seg / "masks" / split / "a_mask.png", np.zeros((8, 8)))
    assert detect_layout(seg) == "segmentation"
    spec = load_dataset(seg)
    assert spec.task == "segment" and spec.splits["val"][0].label == seg / "masks" / "val" / "a_mask.png"
    nested = tmp_path / "nested"
    for split in ("train", "val"):
        save(nested / split / "images" / "b.png", rgb(8, 8))
        write_palette_mask(nested / split / "masks" / "b.png", np.zeros((8, 8)))
    assert detect_layout(nested) == "segmentation"
    assert len(load_dataset(nested).splits["train"]) == 1

    flat = tmp_path / "flat"
    save(flat / "x.png", rgb(8, 8))
    save(flat / "deep" / "er" / "y.jpg", rgb(8, 8))
    assert detect_layout(flat) == "unlabelled"
    assert detect_layout(tmp_path / "seg", task="unlabelled") == "unlabelled"
    assert len(load_dataset(flat).splits["all"]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_split_is_stratified_reproducible_and_reused(tmp_path):
    root = _imagefolder(tmp_path / "d", {"a": 40, "b": 20})
    f1, f2 = tmp_path / "run1" / "splits.json", tmp_path / "run2" / "splits.json"
    s1 = load_dataset(root, val_fraction=0.25, test_fraction=0.25, seed=3, split_file=f1)
    load_dataset(root, val_fraction=0.25, test_fraction=0.25, seed=3, split_file=f2)
    assert f1.read_text() == f2.read_text()  # same seed -> same split file
    saved = json.loads(f1.read_text())["splits"]
    assert {k: len(v) for k, v in saved.items()} == {"train": 30, "val": 15, "test": 15}
    for split in ("val", "test"):  # stratified: 2:1 in every split
        labels = [s.label for s in s1.splits[split]]
        assert labels.count(0) == 10 and labels.count(1) == 5
    other = load_dataset(root, val_fraction=0.25, test_fraction=0.25, seed=4)
    assert {s.path for s in other.splits["val"]} != {s.path for s in s1.splits["val"]}
    # the saved split wins over a new seed, so a run dir stays reproducible
    again = load_dataset(root, seed=99, split_file=f1)
    assert [s.path for s in again.splits["val"]] == [s.path for s in s1.splits["val"]]
    save(root / "a" / "new.png", rgb(8, 8))
    with pytest.raises(DataError, match=r"splits\.json was made for a different file list \(1 new"):
        load_dataset(root, split_file=f1)
    assert not (root / "splits.json").exists()  # nothing written beside the data unless asked


def test_class_map_and_mapping_lut(tmp_path):
    (tmp_path / "cm.yaml").write_text("classes:\n  - {name: bg, color: [0, 0, 0]}\n  - {name: car, color: [9, 8, 7]}\n")
    cm = load_class_map(tmp_path / "cm.yaml")
    assert cm.names == ["bg", "car"] and cm.colours == [(0, 0, 0), (9, 8, 7)]
    (tmp_path / "cm.json").write_text(json.dumps({"0": "bg", "1": "road"}))
    assert load_class_map(tmp_path / "cm.json").names == ["bg", "road"]
    (tmp_path / "map.yaml").write_text("mapping: {0: 0, 1: 1, 2: 1, 149: 25}\n")
    lut = build_lut(load_class_mapping(tmp_path / "map.yaml"))
    mask = np.array([[0, 1, 2], [149, 3, 255]])
    assert lut[mask].tolist() == [[0, 1, 1], [25, 255, 255]]
