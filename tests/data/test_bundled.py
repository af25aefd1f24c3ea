from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dinotune.data.bundled import MARKER, digits_imagefolder, elpv_imagefolder, make_segmentation_dataset
from dinotune.data.check import check_dataset
from dinotune.data.formats import detect_layout, load_dataset
from dinotune.errors import DataError


def test_digits_imagefolder_written_once(tmp_path):
    dest = digits_imagefolder(tmp_path / "digits", size=16)
    spec = load_dataset(dest)
    assert spec.classes == [str(i) for i in range(10)] and not spec.auto_split
    sizes = {k: len(v) for k, v in spec.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["train"] > sizes["val"] > 0 and sizes["test"] > 0
    assert Image.open(spec.splits["val"][0].path).size == (16, 16)
    stamp = (dest / MARKER).stat().st_mtime_ns
    assert digits_imagefolder(dest, size=16) == dest and (dest / MARKER).stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".digits.tmp-*"))
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="not a dataset written by dinotune"):
        digits_imagefolder(tmp_path / "mine")


def test_segmentation_generator(tmp_path):
    dest = make_segmentation_dataset(tmp_path / "seg", n_images=10, size=32)
    assert detect_layout(dest) == "segmentation"
    spec = load_dataset(dest)
    assert len(spec.classes) == 11 and spec.colours[0] == (0, 0, 0)
    assert len(spec.splits["train"]) == 8 and len(spec.splits["val"]) == 2
    mask = np.asarray(Image.open(spec.splits["train"][0].label))
    assert Image.open(spec.splits["train"][0].label).mode == "P"
    values = set(np.unique(np.concatenate([np.asarray(Image.open(s.label)).ravel() for s in spec.splits["train"]])))
    assert 0 in values and 255 in values and values - {0, 255} and max(values - {255}) <= 10
    assert mask.shape == (32, 32)
    rep = check_dataset(dest)
    assert not rep.errors, rep.format_text()


def test_elpv_small_subset(tmp_path):
    pytest.importorskip("elpv_dataset")
    dest = elpv_imagefolder(tmp_path / "elpv", per_class=10, size=32)
    spec = load_dataset(dest)
    assert spec.classes == ["defective", "functional"]
    labels = [s.label for samples in spec.splits.values() for s in samples]
    assert labels.count(0) == 10 and labels.count(1) == 10
    assert {k: len(v) for k, v in spec.splits.items()} == {"train": 12, "val": 4, "test": 4}
    assert "cell" in (dest / "SOURCES.tsv").read_text() and (dest / "LICENSE.txt").is_file()
    img = Image.open(spec.splits["train"][0].path)
    assert img.size == (32, 32) and img.mode == "L"
    again = elpv_imagefolder(dest, per_class=12, size=32)  # other params: rebuilt in place
    assert sum(len(v) for v in load_dataset(again).splits.values()) == 24


def test_elpv_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "elpv_dataset", None)
    with pytest.raises(DataError, match=r'pip install "dinotune\[elpv\]"'):
        elpv_imagefolder(tmp_path / "e", per_class=2)
