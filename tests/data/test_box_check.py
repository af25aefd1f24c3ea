"""`dinotune data check` on detection datasets: a clean one passes; broken COCO and YOLO annotations give
one line each naming the file and annotation id or line, errors exit 1, fixed problems are warnings."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dinotune.cli_data import data_app
from dinotune.data.check import check_dataset
from tests.detection_fixtures import make_shapes_dataset

runner = CliRunner()


def test_a_clean_dataset_passes_with_boxes_counted(tmp_path):
    root = make_shapes_dataset(tmp_path / "d", 6, 3, 0, layout="coco")
    report = check_dataset(root, "detect")
    assert report.layout == "coco" and report.task == "detect" and report.issues == [] and report.exit_code == 0
    assert report.n_images == 9 and report.split_sizes == {"train": 6, "val": 3}
    annotations = json.loads((root / "annotations" / "train.json").read_text())["annotations"]
    assert sum(per.get("train", 0) for per in report.class_counts.values()) == len(annotations)


def test_broken_coco_annotations_are_listed_one_line_each(tmp_path):
    root = make_shapes_dataset(tmp_path / "d", 8, 0, 0, layout="coco")
    path = root / "annotations" / "train.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["bbox"] = [90, 90, 20, 20]
    coco["annotations"][1]["bbox"][2] = 0
    coco["annotations"][2]["category_id"] = 9
    coco["annotations"][3]["image_id"] = 999
    coco["images"].append({"id": 500, "file_name": "gone.png", "width": 96, "height": 96})
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 6]  # train_0005.png: background
    path.write_text(json.dumps(coco))
    (root / "images" / "train" / "train_0007.png").rename(root / "images" / "train" / "extra.png")
    report = check_dataset(root)
    codes = {i.code: i for i in report.issues}
    assert {i.code for i in report.errors} == {"unknown_category", "unknown_image", "missing_image"}
    assert {i.code for i in report.warnings} == {
        "box_out_of_bounds",
        "empty_box",
        "background_images",
        "unlisted_image",
    }
    assert codes["unlisted_image"].message == "images/train/extra.png is not listed in train.json; it is not used " + (
        "(annotate it, or move it out)"
    )
    assert "annotation 3: category_id 9" in codes["unknown_category"].message
    missing = [i.message for i in report.errors if i.code == "missing_image"]
    assert sorted(missing) == [
        "train.json: image 500 'gone.png' is not in images/train/; add the file or delete its entry",
        "train.json: image 8 'train_0007.png' is not in images/train/; add the file or delete its entry",
    ]
    assert "clipped to [90.0, 90.0, 96.0, 96.0]" in codes["box_out_of_bounds"].message
    assert (
        codes["background_images"].files == ["images/train/train_0005.png"] and report.n_images == 7
    )  # listed, on disk
    res = runner.invoke(data_app, ["check", str(root), "--task", "detect"])
    assert res.exit_code == 1 and "Result: 4 error(s), 4 warning(s)" in res.output
    assert "[unknown_image] train.json: annotation 4: image_id 999 is not in 'images'" in res.output


def test_broken_yolo_labels_name_the_line(tmp_path):
    root = make_shapes_dataset(tmp_path / "d", 6, 0, 0, layout="yolo")
    labels = root / "labels" / "train"
    (labels / "train_0001.txt").write_text("0 0.5 0.5 0.1\n7 0.5 0.5 0.1 0.1\n")
    (labels / "train_0002.txt").unlink()
    for txt in labels.glob("train_000[345].txt"):
        txt.write_text("")  # every other image without boxes: the train split has none at all
    (labels / "train_0000.txt").write_text("")
    res = runner.invoke(data_app, ["check", str(root), "--json"])
    found = json.loads(res.output)
    messages = {i["code"]: i["message"] for i in found["issues"]}
    assert res.exit_code == 1 and found["layout"] == "yolo"
    assert messages["malformed"].startswith("labels/train/train_0001.txt:1: expected 'class cx cy w h'")
    assert messages["unknown_category"].startswith("labels/train/train_0001.txt:2: class 7")
    assert "background image" in messages["no_label_file"] and "train_0002.png" in messages["no_label_file"]
    assert "hold no boxes" in messages["no_boxes"]
    assert {i["code"] for i in found["issues"] if i["severity"] == "warning"} == {
        "no_label_file",
        "empty_class",
        "background_images",
    }
    assert "5 of 6 images have no boxes" in messages["background_images"]
