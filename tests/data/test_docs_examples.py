"""The Python examples of docs/satellite.md and docs/medical.md run, on files generated in tmp_path."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _example(page: str, needle: str) -> str:
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S) if needle in b]
    return code


def _run(code: str, page: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(folder)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(DOCS / page), "exec"), {})
    return printed.getvalue()


def test_satellite_example_keeps_crs_and_transform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rasterio")
    from tests.evaluation.test_tiles import _geotiff, make_classifier, make_segmenter

    make_segmenter(tmp_path / "runs" / "landcover")
    make_classifier(tmp_path / "runs" / "crops")
    _geotiff(tmp_path / "scene.tif", 300, 400)
    out = _run(_example("satellite.md", "run_predict"), "satellite.md", tmp_path, monkeypatch)
    assert "{'masks': 1} {'scenes': 1, 'tiles': 35}" in out  # 5 x 7 tiles of 64 px (last ones shifted back)
    assert (tmp_path / "tiles" / "scene.csv").is_file() and (tmp_path / "tiles" / "scene.json").is_file()


def test_medical_example_finds_leakage_and_keeps_patients_whole(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("pydicom")
    from tests.data.test_groups import _patients_folder, dicom_slice

    _patients_folder(tmp_path / "data" / "ct_split", leak=True)
    for p in range(10):
        for s in range(3):
            dicom_slice(tmp_path / "data" / "ct" / ("a" if p % 2 else "b") / f"P{p}_{s}.dcm", f"P{p}")
    out = _run(_example("medical.md", "group_by"), "medical.md", tmp_path, monkeypatch).splitlines()
    assert out[0] == "1 ['group_leakage']"
    patients = [set(eval(line.split(" ", 1)[1])) for line in out[1:]]
    assert len(out) == 4 and sum(len(p) for p in patients) == 10 and not set.intersection(*patients)
