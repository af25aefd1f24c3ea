"""Patient-aware splits: a patient's slices never straddle train/val/test, and leakage on disk is one line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from dinotune.cli_data import data_app  # noqa: E402
from dinotune.data.config import DataConfig  # noqa: E402
from dinotune.data.formats import load_dataset  # noqa: E402
from dinotune.data.preflight import preflight  # noqa: E402
from dinotune.errors import DataError  # noqa: E402
from tests.data.conftest import rgb, save  # noqa: E402
from tests.data.test_preflight import _error_lines  # noqa: E402

runner = CliRunner()


def dicom_slice(path: Path, patient: str, study: str = "1.2.3", source: str = "CT_small.dcm") -> Path:
    """pydicom's bundled file, re-labelled as one slice of `patient` (written into tmp_path only)."""
    ds = pydicom.dcmread(get_testdata_file(source, download=False))
    ds.PatientID, ds.StudyInstanceUID = patient, study
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(path)])  # distinct bytes: not duplicates
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def _patients_folder(root: Path, leak: bool) -> Path:
    """train/ and val/ of two classes, 2 slices per patient; with `leak`, patient P1 also has a slice in val."""
    for split, patients in {"train": ["P1", "P2", "P3", "P4"], "val": ["P5", "P6"]}.items():
        for i, patient in enumerate(patients):
            for s in range(2):
                dicom_slice(root / split / ("a" if i % 2 else "b") / f"{patient}_{s}.dcm", patient)
    if leak:
        dicom_slice(root / "val" / "a" / "P1_9.dcm", "P1")
    return root


def test_a_patient_in_two_split_folders_fails_check_and_preflight_with_one_line(tmp_path: Path) -> None:
    root = _patients_folder(tmp_path / "ct", leak=True)
    res = runner.invoke(data_app, ["check", str(root), "--min-per-class", "1"])
    errors = _error_lines(res.output)
    assert res.exit_code == 1 and len(errors) == 1, res.output
    assert errors[0].startswith("  [group_leakage]") and "PatientID 'P1' in train/val" in errors[0]
    with pytest.raises(DataError) as err:
        preflight(load_dataset(root), DataConfig(root=root))
    assert errors[0] == f"  [group_leakage] {err.value}" and "\n" not in str(err.value)
    clean = _patients_folder(tmp_path / "clean", leak=False)
    assert runner.invoke(data_app, ["check", str(clean), "--min-per-class", "1"]).exit_code == 0
    preflight(load_dataset(clean), DataConfig(root=clean))


def test_group_by_study_instance_uid(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    for split, cls, study in (("train", "a", "1.1"), ("train", "b", "1.2"), ("val", "a", "1.3"), ("val", "b", "1.1")):
        dicom_slice(root / split / cls / f"{study}.dcm", "same-patient", study)
    res = runner.invoke(data_app, ["check", str(root), "--min-per-class", "1", "--group-by", "StudyInstanceUID"])
    assert res.exit_code == 1 and "StudyInstanceUID '1.1' in train/val" in res.output


def test_automatic_split_keeps_each_patient_in_one_split(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    for p in range(20):
        for s in range(3):
            dicom_slice(root / ("a" if p % 2 else "b") / f"P{p:02d}_{s}.dcm", f"P{p:02d}")
    check = runner.invoke(data_app, ["check", str(root), "--min-per-class", "1"])
    assert "[groups_not_kept] 20 PatientID(s) have several images" in check.output
    spec = load_dataset(root, val_fraction=0.2, test_fraction=0.2, group_by="PatientID", split_file=tmp_path / "s.json")
    where: dict[str, set[str]] = {}
    for split, samples in spec.splits.items():
        for sample in samples:
            where.setdefault(sample.path.name.split("_")[0], set()).add(split)
    assert all(len(splits) == 1 for splits in where.values())
    assert {len(spec.splits[n]) // 3 for n in ("val", "test")} == {4}  # 20% of 20 patients, stratified by class
    plain = load_dataset(root, val_fraction=0.2, test_fraction=0.2, split_file=None)
    parted = {}
    for split, samples in plain.splits.items():
        for sample in samples:
            parted.setdefault(sample.path.name.split("_")[0], set()).add(split)
    assert any(len(s) > 1 for s in parted.values())  # what group_by prevents


def test_group_by_a_csv_column(tmp_path: Path) -> None:
    root = tmp_path / "slides"
    rows = []
    for p in range(10):
        for s in range(4):
            save(root / "img" / f"{p}_{s}.png", rgb(seed=p * 4 + s))
            rows.append({"path": f"img/{p}_{s}.png", "label": "tumour" if p % 2 else "normal", "patient": f"pt{p}"})
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    spec = load_dataset(root, val_fraction=0.2, test_fraction=0.2, group_by="patient")
    assert spec.classes == ["normal", "tumour"]  # the group column is not a label
    for split, samples in spec.splits.items():
        others = {s.group for n, ss in spec.splits.items() if n != split for s in ss}
        assert not {s.group for s in samples} & others
    with pytest.raises(DataError, match="group_by='PatientId' matches no CSV column"):
        load_dataset(root, group_by="PatientId")


def test_probe_refuses_leakage_with_the_same_line_before_extracting(tmp_path: Path) -> None:
    from dinotune.verbs.probe import probe

    root = _patients_folder(tmp_path / "ct", leak=True)
    with pytest.raises(DataError) as probed:
        probe({"root": root, "image_size": 32, "num_workers": 0}, backbone="random:vit_test16",
              out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)  # fmt: skip
    with pytest.raises(DataError) as checked:
        preflight(load_dataset(root), DataConfig(root=root))
    assert str(probed.value) == str(checked.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
