"""The one intensity rule: real bit depth, signed kept signed, floats not saturated, nodata masked."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
import yaml
from typer.testing import CliRunner

from dinotune.cli_data import data_app
from dinotune.data import intensity
from dinotune.data.check import check_dataset
from dinotune.data.config import ScalingConfig
from dinotune.data.decode import read_image, read_raw
from dinotune.data.intensity import Intensity, to_unit
from dinotune.data.stats import compute_stats
from tests.data.conftest import rgb, save


def monkey_reset_warnings() -> None:
    """The rule warns once per process; forget earlier warnings so this test sees its own."""
    intensity._warned.clear()


def _tif(path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, **kw)
    return path


def test_uint8_rule_is_unchanged_bit_for_bit():
    arr = rgb(16, 16)
    np.testing.assert_array_equal(to_unit(arr), arr.astype(np.float32) / 255.0)


def test_signed_int16_keeps_negative_values_distinct(tmp_path):
    hu = np.array([[-1024, -500, -1, 0, 1, 400, 1000, 3071]], dtype=np.int16)
    img = read_image(_tif(tmp_path / "ct.tif", hu), channels=1)[0, :, 0]
    assert len(np.unique(img)) == hu.size  # nothing collapsed onto 0
    assert np.all(np.diff(img) > 0)  # order kept: -1024 < -1 < 0 < 1
    np.testing.assert_allclose(img, (hu[0] + 32768.0) / 65535.0, rtol=1e-6)


def test_declared_12_bit_maximum_uses_the_full_range(tmp_path, caplog):
    arr = np.linspace(0, 4095, 64).astype(np.uint16).reshape(8, 8)
    path = _tif(tmp_path / "12bit.tif", arr, extratags=[(341, "H", 1, 4095, True)])  # SMaxSampleValue
    img = read_image(path, channels=1)
    assert img.max() == pytest.approx(1.0) and img.min() == 0.0
    monkey_reset_warnings()
    with caplog.at_level(logging.WARNING, logger="dinotune.data.intensity"):
        plain = read_image(_tif(tmp_path / "plain.tif", arr), channels=1)
    assert any("12-bit data in 16-bit files: 6% of the range used" in r.getMessage() for r in caplog.records)
    assert plain.max() == pytest.approx(4095 / 65535)  # undeclared: the container's range, with a warning


def test_check_warns_about_12_bit_data_in_16_bit_files(tmp_path):
    for cls in ("a", "b"):
        for i in range(5):
            arr = np.random.default_rng(i + (5 if cls == "b" else 0)).integers(0, 4096, (16, 16), dtype=np.uint16)
            _tif(tmp_path / "ds" / cls / f"{i}.tif", arr)
    report = check_dataset(tmp_path / "ds", min_per_class=1)
    notes = [i.message for i in report.warnings if i.code == "bit_range"]
    assert notes == ["12-bit data in 16-bit files: 6% of the range used; run `dinotune data stats` (10 file(s))"]
    assert report.exit_code == 0


def test_float_geotiff_of_raw_counts_is_not_saturated_and_nodata_is_masked(tmp_path):
    counts = np.random.default_rng(0).uniform(0, 5000, (32, 32, 3)).astype(np.float32)
    counts[:4, :4] = -9999.0  # nodata corner
    path = _tif(
        tmp_path / "scene" / "s2.tif", counts, photometric="rgb", extratags=[(42113, "s", 0, "-9999", True)]
    )  # GDAL_NODATA
    img = read_image(path, channels=3)
    data = img[4:, 4:]
    assert np.mean(data >= 1.0) < 0.01 and data.std() > 0.2  # spread over [0, 1], not all 1.0
    assert np.all(img[:4, :4] == 0.0)  # nodata masked
    valid = counts[counts != -9999.0]
    expected = (counts[4:, 4:] - valid.min()) / (valid.max() - valid.min())  # per image, nodata left out
    np.testing.assert_allclose(data, expected, atol=1e-5)
    stats = compute_stats(tmp_path / "scene")
    assert stats["scaling"] == "percentile" and min(stats["low"]) > 0  # nodata left out of the percentiles
    scaled = read_image(
        path, channels=3, scaling=ScalingConfig(mode="percentile", low=stats["low"], high=stats["high"])
    )
    assert 0.3 < scaled[4:, 4:].mean() < 0.7
    report = check_dataset(tmp_path / "scene", task="unlabelled")
    assert any(i.code == "float_range" and "stretched per image" in i.message for i in report.warnings)


def test_stats_yaml_for_float_rasters_round_trips(tmp_path):
    _tif(tmp_path / "r" / "a.tif", np.full((8, 8), 2500.0, np.float32) + np.arange(64).reshape(8, 8))
    res = CliRunner().invoke(data_app, ["stats", str(tmp_path / "r")])
    cfg = yaml.safe_load(res.output)["data"]
    assert cfg["scaling"]["mode"] == "percentile" and cfg["scaling"]["low"][0] > 2500


def test_normalised_float_and_explicit_divisor_are_kept(tmp_path):
    unit = np.random.default_rng(1).uniform(0, 1, (8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(to_unit(unit), unit)
    raw = read_raw(_tif(tmp_path / "u16.tif", np.full((4, 4), 1000, np.uint16)))
    assert to_unit(raw, Intensity(bits=12), ScalingConfig(divisor=2000))[0, 0, 0] == pytest.approx(0.5)
    assert to_unit(raw, Intensity(bits=12))[0, 0, 0] == pytest.approx(1000 / 4095)
    save(tmp_path / "g.png", np.full((4, 4), 51, np.uint8))
    assert read_image(tmp_path / "g.png", 1)[0, 0, 0] == np.float32(51) / np.float32(255)
