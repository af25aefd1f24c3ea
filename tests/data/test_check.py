from __future__ import annotations

import json

import numpy as np
import yaml
from typer.testing import CliRunner

from dinotune.cli_data import data_app
from dinotune.data.check import check_dataset
from tests.data.conftest import make_defect_imagefolder, make_defect_segmentation, rgb, save, write_tiff_4band

runner = CliRunner()


def _files_with(report, code):
    return {f for i in report.issues if i.code == code for f in i.files}


def test_check_reports_every_classification_defect_by_name(tmp_path):
    root = tmp_path / "ds"
    d = make_defect_imagefolder(root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    rep = check_dataset(root)
    rel = {k: v.relative_to(root).as_posix() for k, v in d.items()}
    assert _files_with(rep, "empty") == {rel["zero"]}
    assert _files_with(rep, "not_image") == {rel["text"]}
    assert _files_with(rep, "unreadable") == {rel["truncated_jpeg"], rel["truncated_png"]}
    assert _files_with(rep, "duplicate_cross_split") == {rel["dup_cross_train"], rel["dup_cross_val"]}
    assert _files_with(rep, "duplicate") == {rel["dup_within_a"], rel["dup_within_b"]}
    assert _files_with(rep, "tiny") == {rel["tiny"]}
    assert rel["gray"] in _files_with(rep, "mixed_channels")
    assert _files_with(rep, "mixed_bit_depth") == {rel["tiff16"]}
    severity = {i.code: i.severity for i in rep.issues}
    assert severity["duplicate_cross_split"] == "error" and severity["duplicate"] == "warning"
    assert severity["mixed_channels"] == "warning"
    few = [i.message for i in rep.issues if i.code == "few_images"]
    assert len(few) == 1 and "'dog' has only 4 images" in few[0]
    assert any(i.code == "imbalance" for i in rep.issues) and rep.imbalance > 10
    assert rep.class_counts["dog"] == {"train": 3, "val": 1}
    # no valid file is reported as an error
    bad = {rel[k] for k in ("zero", "text", "truncated_jpeg", "truncated_png", "dup_cross_train", "dup_cross_val")}
    assert {f for i in rep.errors for f in i.files} == bad
    assert rep.exit_code == 1
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # read-only
    text = rep.format_text()
    assert "train/cat/notes.jpg" in text and "ERRORS (5)" in text


def test_check_clean_dataset_exits_zero_with_warnings(tmp_path):
    for cls in ("a", "b"):  # 5 per class: the automatic split gives each one validation image
        for i in range(5):
            save(tmp_path / "ds" / cls / f"{i}.png", rgb(seed=i + (10 if cls == "b" else 0)))
    rep = check_dataset(tmp_path / "ds")
    assert rep.exit_code == 0 and not rep.errors
    assert {i.code for i in rep.warnings} == {"few_images"}


def test_check_segmentation_defects(tmp_path):
    root = tmp_path / "seg"
    d = make_defect_segmentation(root)
    rep = check_dataset(root)
    rel = {k: v.relative_to(root).as_posix() for k, v in d.items()}
    assert rep.task == "segment"
    assert rel["size_mismatch"] in _files_with(rep, "mask_size")
    assert _files_with(rep, "mask_values") == {rel["bad_values"]}
    assert _files_with(rep, "image_without_mask") == {rel["image_without_mask"]}
    assert _files_with(rep, "mask_without_image") == {rel["mask_without_image"]}
    errors = {f for i in rep.errors for f in i.files}
    assert not any(f.endswith(f"ok_{i}.png") for f in errors for i in range(4))
    assert rep.mask_values == [0, 1, 2, 7, 255] and rep.exit_code == 1


def test_cli_check_exit_codes_and_json(tmp_path):
    root = tmp_path / "ds"
    make_defect_imagefolder(root)
    res = runner.invoke(data_app, ["check", str(root), "--json"])
    assert res.exit_code == 1, res.output
    payload = json.loads(res.output)
    assert payload["n_errors"] == 5 and payload["layout"] == "imagefolder"
    res = runner.invoke(data_app, ["check", str(root)])
    assert res.exit_code == 1 and "[empty]" in res.output and "train/cat/zero.jpg" in res.output
    clean = tmp_path / "clean"
    for cls in ("a", "b"):  # 5 per class: the automatic split gives each one validation image
        for i in range(5):
            save(clean / cls / f"x{i}.png", rgb(seed=i + (1 if cls == "a" else 10)))
    res = runner.invoke(data_app, ["check", str(clean), "--min-per-class", "1"])
    assert res.exit_code == 0 and "Result: 0 error(s), 0 warning(s)" in res.output


def test_cli_stats_prints_and_stores_yaml(tmp_path):
    root = tmp_path / "bands"
    for i in range(3):
        write_tiff_4band(root / f"{i}.tif")
    out = tmp_path / "run" / "stats.yaml"
    res = runner.invoke(data_app, ["stats", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.output)["data"]
    assert cfg["channels"] == 4 and cfg["scaling"]["mode"] == "percentile"
    assert cfg["scaling"]["low"] == [1000, 2000, 3000, 4000] and len(cfg["mean"]) == 4
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(res.output)
    rgb_root = tmp_path / "rgb"
    save(rgb_root / "a.png", np.full((8, 8, 3), 51, np.uint8))
    cfg = yaml.safe_load(runner.invoke(data_app, ["stats", str(rgb_root)]).output)["data"]
    assert cfg["scaling"] == {"mode": "fixed"} and cfg["mean"] == [0.2, 0.2, 0.2]
