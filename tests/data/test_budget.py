"""The decode budget refuses a file from its headers, before any pixel is decoded."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinotune.data.budget import BudgetError, budget_bytes
from dinotune.data.decode import read_image, read_mask, read_raw
from dinotune.data.headers import check_budget
from dinotune.serve.images import UploadError, decode_upload


def _zlib_bomb(path: Path, pages: int = 300, side: int = 2048) -> Path:
    """300 pages of 2048x2048 zeros in one series: ~1.4 MB on disk, 1.26 GB decoded."""

    def planes():
        plane = np.zeros((side, side), np.uint8)
        for _ in range(pages):
            yield plane

    with tifffile.TiffWriter(path) as tif:
        tif.write(planes(), shape=(pages, side, side), dtype=np.uint8, compression="zlib")
    return path


def test_multipage_zlib_bomb_refused_from_headers_with_low_memory(tmp_path):
    bomb = _zlib_bomb(tmp_path / "bomb.tif")
    assert bomb.stat().st_size < 3 * 2**20  # small upload ...
    assert budget_bytes(178_956_970) < 300 * 2048 * 2048  # ... that decodes past the default budget
    tracemalloc.start()
    try:
        with pytest.raises(BudgetError, match=r"bomb\.tif: decoding needs 2048x2048 x 300 page\(s\)"):
            read_image(bomb)
        with pytest.raises(BudgetError):
            read_mask(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB: pixels were decoded"


def test_multi_series_tiff_costs_and_decodes_only_its_first_series(tmp_path):
    path = tmp_path / "series.tif"
    plane = np.full((1024, 1024), 7, np.uint8)
    with tifffile.TiffWriter(path) as tif:
        for _ in range(300):  # 300 series of one page each: only series 0 is read
            tif.write(plane, compression="zlib")
    assert check_budget(path, "tiff", max_pixels=1024 * 1024).pages == 1
    tracemalloc.start()
    try:
        img = read_image(path, channels=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert img.shape == (1024, 1024, 1) and img[0, 0, 0] == np.float32(7) / np.float32(255)
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # one page (4 MiB float), not 300


def test_serve_answers_413_for_the_bomb(tmp_path):
    data = _zlib_bomb(tmp_path / "bomb.tif", pages=40, side=1024).read_bytes()  # 40 Mpx, 4 Mpx per page
    with pytest.raises(UploadError) as err:
        decode_upload(data, "scan.tif", channels=3, max_pixels=4_000_000)
    assert err.value.status == 413 and "scan.tif" in err.value.message and "page(s)" in err.value.message


def test_budget_counts_pages_channels_and_bytes(tmp_path):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, np.zeros((4, 10, 10), np.uint16))  # 4 pages x 100 px x 2 bytes = 800 bytes
    cost = check_budget(p, "tiff", max_pixels=134)  # budget 804 bytes
    assert (cost.pages, cost.itemsize, cost.nbytes) == (4, 2, 800)
    with pytest.raises(BudgetError, match="4 page"):
        read_raw(p, max_pixels=133)  # budget 798 bytes: one sample short
    assert read_raw(p, max_pixels=134).shape == (10, 10, 4)


def test_dicom_budget_counts_the_one_decoded_frame():
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("examples_ybr_color.dcm", download=False)  # 30 frames of 320x240 RGB
    cost = check_budget(path, "dicom", max_pixels=320 * 240)
    assert (cost.width, cost.height, cost.pages, cost.channels) == (320, 240, 1, 3)
    with pytest.raises(BudgetError, match="max_pixels"):
        read_image(path, max_pixels=320 * 240 - 1)


def test_header_channels_match_the_decoded_channels(tmp_path, tricky):
    from dinotune.data.decode import image_info

    rgba = tmp_path / "rgba.tif"
    tifffile.imwrite(rgba, np.zeros((8, 8, 4), np.uint8), photometric="rgb", extrasamples=["unassalpha"])
    six = tmp_path / "six.tif"
    tifffile.imwrite(six, np.zeros((8, 8, 6), np.uint16), photometric="minisblack", planarconfig="contig")
    for path in (rgba, six, tricky["multipage"], tricky["tiff4"], tricky["tiff16"], tricky["rgba"], tricky["gray"]):
        assert image_info(path).channels == read_raw(path).shape[2], path.name
