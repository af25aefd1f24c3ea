"""Detection datasets: COCO-JSON and YOLO-txt read to the same boxes, the automatic split, and every
problem of the annotations named by file and annotation id or line (fixed with a warning, or an error)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dinotune.data.boxes import load_detection, read_detection
from dinotune.data.formats import detect_layout, load_dataset
from dinotune.errors import DataError
from tests.data.conftest import rgb, save
from tests.detection_fixtures import SHAPE_CLASSES, make_shapes_dataset


def _coco(root: Path, images: list[dict], annotations: list[dict], categories=None, split="train") -> Path:
    for img in images:
        save(root / "images" / split / img["file_name"], rgb(img.get("height", 40), img.get("width", 60)))
    cats = categories if categories is not None else [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    payload = {"images": images, "annotations": annotations, "categories": cats}
    (root / "annotations" / f"{split}.json").write_text(json.dumps(payload))
    return root


def _ann(i: int, image_id: int, cat: int, bbox: list[float], **kw) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, **kw}


def test_coco_and_yolo_of_one_dataset_read_to_the_same_boxes(tmp_path):
    coco = make_shapes_dataset(tmp_path / "coco", 6, 3, 2, layout="coco", seed=4)
    yolo = make_shapes_dataset(tmp_path / "yolo", 6, 3, 2, layout="yolo", seed=4)
    assert detect_layout(coco) == "coco" and detect_layout(yolo) == "yolo"
    a, b = load_detection(coco), load_detection(yolo)
    assert a.classes == b.classes == list(SHAPE_CLASSES)
    assert a.category_ids == [1, 2, 3] and b.category_ids == [0, 1, 2]
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 6, "val": 3, "test": 2} and not a.auto_split
    for split in ("train", "val", "test"):
        for sa, sb in zip(a.splits[split], b.splits[split], strict=True):
            assert sa.path.name == sb.path.name and sa.boxes.dtype == np.float32 and sa.labels.dtype == np.int64
            np.testing.assert_allclose(sa.boxes, sb.boxes, atol=1e-3)
            np.testing.assert_array_equal(sa.labels, sb.labels)
            assert 1 <= sa.num_boxes <= 4 and (sa.width, sa.height) == (96, 96)
    ids = [s.image_id for split in a.splits.values() for s in split]
    assert len(set(ids)) == len(ids)
    as_images = load_dataset(coco)  # what needs only the files (data stats) sees the same images
    assert as_images.task == "detect" and as_images.layout == "coco" and len(as_images.splits["train"]) == 6
    with pytest.raises(DataError, match=r"laid out as 'yolo' \(detect data\), but task='classify'"):
        load_dataset(yolo, task="classify")


def test_missing_val_is_cut_from_train_by_seed(tmp_path):
    root = make_shapes_dataset(tmp_path / "d", 20, 0, 0, layout="yolo")
    first, again = load_detection(root, split_seed=1), load_detection(root, split_seed=1)
    other = load_detection(root, split_seed=2)
    assert first.auto_split and set(first.splits) == {"train", "val"}
    names = {k: [s.path.name for s in v] for k, v in first.splits.items()}
    assert names == {k: [s.path.name for s in v] for k, v in again.splits.items()}
    assert names != {k: [s.path.name for s in v] for k, v in other.splits.items()}
    assert len(names["val"]) in (3, 4, 5) and not set(names["val"]) & set(names["train"])
    assert len(names["val"]) + len(names["train"]) == 20


def test_coco_2017_names_and_image_folders(tmp_path):
    root = tmp_path / "c"
    save(root / "images" / "val2017" / "a.jpg", rgb(30, 50))
    (root / "annotations").mkdir(parents=True)
    payload = {
        "images": [{"id": 42, "file_name": "a.jpg", "width": 50, "height": 30}],
        "annotations": [_ann(1, 42, 5, [10, 5, 20, 10])],
        "categories": [{"id": 5, "name": "bolt"}],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(payload))
    spec = read_detection(root)
    (sample,) = spec.splits["val"]
    assert sample.image_id == 42 and sample.path == root / "images" / "val2017" / "a.jpg"
    np.testing.assert_array_equal(sample.boxes, [[10, 5, 30, 15]])
    assert spec.category_ids == [5] and sample.labels.tolist() == [0]


def test_coco_fixes_boxes_it_can_and_warns(tmp_path, caplog):
    images = [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}, {"id": 2, "file_name": "b.png"}]
    anns = [
        _ann(10, 1, 7, [50, 30, 20, 20]),  # sticks out: clipped to [50, 30, 60, 40]
        _ann(11, 1, 3, [5, 5, 0, 8]),  # no area: left out
        _ann(12, 1, 3, [1, 1, 10, 10], iscrowd=1),  # crowd: left out
        _ann(13, 1, 3, [2, 2, 4, 4]),
    ]
    spec = read_detection(_coco(tmp_path / "c", images, anns))
    a, b = spec.splits["all"]
    assert spec.classes == ["dog", "cat"] and spec.category_ids == [3, 7]  # numbered in id order
    np.testing.assert_array_equal(a.boxes, [[50, 30, 60, 40], [2, 2, 6, 6]])
    assert a.labels.tolist() == [1, 0] and b.num_boxes == 0  # an image without boxes is kept
    codes = {p.code: p for p in spec.problems}
    assert set(codes) == {"box_out_of_bounds", "empty_box", "crowd"}
    assert "annotation 10" in codes["box_out_of_bounds"].message and "clipped to [50.0, 30.0, 60.0, 40.0]" in (
        codes["box_out_of_bounds"].message
    )
    assert "annotation 11" in codes["empty_box"].message
    with caplog.at_level("WARNING"):
        loaded = load_detection(tmp_path / "c")
    assert "clipped" in caplog.text and set(loaded.splits) == {"train", "val"}


@pytest.mark.parametrize(
    ("ann", "code", "words"),
    [
        (_ann(5, 1, 99, [1, 1, 5, 5]), "unknown_category", ["train.json: annotation 5", "category_id 99", "[3, 7]"]),
        (_ann(6, 8, 3, [1, 1, 5, 5]), "unknown_image", ["annotation 6", "image_id 8"]),
        ({"id": 9, "image_id": 1, "category_id": 3, "bbox": [1, 2]}, "malformed", ["annotation 9", "bbox"]),
    ],
)
def test_coco_errors_name_the_annotation_and_stop_loading(tmp_path, ann, code, words):
    root = _coco(tmp_path / "c", [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}], [ann])
    (problem,) = read_detection(root).problems
    assert problem.severity == "error" and problem.code == code
    with pytest.raises(DataError) as err:
        load_detection(root)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_coco_one_file_under_two_ids_is_an_error(tmp_path):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}]
    root = _coco(tmp_path / "c", images, [_ann(1, 1, 3, [1, 1, 5, 5]), _ann(2, 2, 7, [9, 9, 5, 5])])
    (problem,) = read_detection(root).problems
    assert problem.code == "duplicate_file" and "'a.png' is listed as image 1 and image 2" in problem.message


def test_coco_missing_image_and_bad_files(tmp_path):
    root = _coco(tmp_path / "c", [{"id": 1, "file_name": "a.png"}], [])
    (root / "images" / "train" / "a.png").unlink()
    (problem,) = read_detection(root).problems
    assert problem.code == "missing_image" and "'a.png'" in problem.message
    (root / "annotations" / "train.json").write_text("{not json")
    with pytest.raises(DataError, match=r"train\.json: not valid JSON"):
        read_detection(root)
    (root / "annotations" / "train.json").write_text(json.dumps([{"file_name": "a.png", "label": 1}]))
    with pytest.raises(DataError, match="not a COCO file"):
        read_detection(root)


def _yolo(root: Path, labels: dict[str, str], names: str | None = "names: [cat, dog]\n", size=(40, 60)) -> Path:
    for stem in labels:
        save(root / "images" / "train" / f"{stem}.png", rgb(*size))
    for stem, text in labels.items():
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "data.yaml").write_text(names)
    return root


def test_yolo_lines_become_pixel_boxes(tmp_path):
    root = _yolo(tmp_path / "y", {"a": "1 0.5 0.5 0.5 0.25\n\n0 0.1 0.1 0.1 0.1\n", "b": "0 0.1 0.2 0.3 0.2 0.3 0.6\n"})
    spec = read_detection(root)
    a, b = spec.splits["all"]
    np.testing.assert_allclose(a.boxes, [[15, 15, 45, 25], [3, 2, 9, 6]], atol=1e-4)  # 60 wide, 40 tall
    assert a.labels.tolist() == [1, 0] and spec.problems == []
    np.testing.assert_allclose(b.boxes, [[6, 8, 18, 24]], atol=1e-4)  # a polygon: its bounding box
    (root / "data.yaml").write_text("names: {0: cat, 1: dog, 2: bird}\n")
    assert read_detection(root).classes == ["cat", "dog", "bird"]
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("ant\nbee\n")
    assert read_detection(root).classes == ["ant", "bee"]


def test_yolo_problems_name_file_and_line(tmp_path):
    root = _yolo(
        tmp_path / "y",
        {
            "a": "0 0.5 0.5 0.2 0.2\n1 0.5 0.5\n",  # line 2 malformed
            "b": "5 0.5 0.5 0.2 0.2\n",  # unknown class
            "c": "0 30 20 10 10\n",  # pixels, not normalised
            "d": "0 0.95 0.5 0.2 0.2\n",  # sticks out on the right: clipped
            "e": None,  # no label file: a background image
        },
    )
    (root / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    found = read_detection(root).problems
    problems = {p.code: p for p in found if "c.txt" not in p.message}
    assert set(problems) == {
        "malformed",
        "unknown_category",
        "box_out_of_bounds",
        "no_label_file",
        "label_without_image",
    }
    assert "labels/train/a.txt:2" in problems["malformed"].message
    assert "labels/train/b.txt:1: class 5" in problems["unknown_category"].message
    assert (
        "images/train/e.png" in problems["no_label_file"].message and "background" in problems["no_label_file"].message
    )
    assert "ghost.txt" in problems["label_without_image"].message
    (c_error,) = [p for p in found if "c.txt" in p.message]
    assert c_error.code == "malformed" and "labels/train/c.txt:1: values" in c_error.message
    assert "not normalised" in c_error.message
    with pytest.raises(DataError, match=r"labels/train/a\.txt:2: .*\(and 2 more"):
        load_detection(root)


def test_yolo_without_names_and_task_detect_on_other_data(tmp_path):
    root = _yolo(tmp_path / "y", {"a": "2 0.5 0.5 0.2 0.2\n"}, names=None)
    spec = read_detection(root)
    assert spec.classes == ["0", "1", "2"] and [p.code for p in spec.problems] == ["no_class_names"]
    save(tmp_path / "plain" / "cat" / "a.png", rgb(8, 8))
    assert detect_layout(tmp_path / "plain") == "imagefolder"
    with pytest.raises(DataError, match=r"no annotations/train\.json"):
        detect_layout(tmp_path / "plain", task="detect")
    with pytest.raises(DataError, match="not a detection dataset"):
        load_detection(tmp_path / "plain")


def test_roboflow_exports_read_like_the_standard_layouts(tmp_path):
    """Roboflow writes <split>/_annotations.coco.json beside the images, and <split>/images + <split>/labels."""
    import shutil

    standard = {lay: make_shapes_dataset(tmp_path / lay, 4, 2, 0, layout=lay, seed=5) for lay in ("coco", "yolo")}
    coco, yolo = tmp_path / "rf_coco", tmp_path / "rf_yolo"
    for split, folder in (("train", "train"), ("val", "valid")):
        shutil.copytree(standard["coco"] / "images" / split, coco / folder)
        shutil.copy(standard["coco"] / "annotations" / f"{split}.json", coco / folder / "_annotations.coco.json")
        shutil.copytree(standard["yolo"] / "images" / split, yolo / folder / "images")
        shutil.copytree(standard["yolo"] / "labels" / split, yolo / folder / "labels")
    shutil.copy(standard["yolo"] / "data.yaml", yolo / "data.yaml")
    for layout, root in (("coco", coco), ("yolo", yolo)):
        assert detect_layout(root) == layout
        ours, theirs = load_detection(root), load_detection(standard[layout])
        assert ours.classes == theirs.classes and ours.problems == [] and set(ours.splits) == {"train", "val"}
        for split in ("train", "val"):
            for a, b in zip(ours.splits[split], theirs.splits[split], strict=True):
                assert a.path.name == b.path.name and a.path != b.path
                np.testing.assert_array_equal(a.boxes, b.boxes)
