"""DICOM as an input: values checked against pydicom's own LUT functions on its bundled test files."""

from __future__ import annotations

import logging
import shutil
import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array  # noqa: E402

from dinotune.config import validate  # noqa: E402
from dinotune.data.check import check_dataset  # noqa: E402
from dinotune.data.config import DataConfig, ScalingConfig  # noqa: E402
from dinotune.data.decode import image_info, read_image, sniff_format  # noqa: E402
from dinotune.data.dicom import dicom_modality, output_range, read_dicom  # noqa: E402
from dinotune.data.formats import detect_layout, load_dataset  # noqa: E402
from dinotune.errors import ConfigError, DataError  # noqa: E402


def _file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def _voi_unit(values: np.ndarray, ds) -> np.ndarray:
    """pydicom's windowing output rescaled from its output range to [0, 1]."""
    lo, hi = output_range(ds)
    return (np.asarray(apply_voi_lut(values, ds, prefer_lut=False), np.float64) - lo) / (hi - lo)


def test_ct_values_are_hounsfield_units_from_pydicom_modality_lut():
    path = _file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    hu = dicom_modality(path)
    np.testing.assert_allclose(hu, expected, atol=1e-4)
    assert hu.min() < 0  # RescaleIntercept -1024: air and fat are negative, not clipped to 0
    assert sniff_format(path) == "dicom" and image_info(path).dtype == "int16"


@pytest.mark.parametrize(
    ("window", "center", "width"), [("ct-lung", -600, 1500), ("ct-bone", 400, 1800), ([50.0, 350.0], 50, 350)]
)
def test_ct_window_presets_equal_pydicom_windowing(window, center, width):
    path = _file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds)
    ds.WindowCenter, ds.WindowWidth = center, width
    expected = _voi_unit(hu, ds)
    got = read_image(path, channels=1, scaling=ScalingConfig(window=window))[:, :, 0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert got.std() > 0.05  # a real window spreads CT_small's values (the full int16 range would not)


def test_mr_auto_window_uses_the_file_window_center_and_width():
    path = _file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    expected = _voi_unit(apply_modality_lut(ds.pixel_array, ds), ds)
    got = read_image(path, channels=3)
    assert got.shape == (64, 64, 3)
    np.testing.assert_allclose(got[:, :, 1], expected, atol=1e-4)
    np.testing.assert_array_equal(read_image(path, channels=3, scaling=ScalingConfig()), got)  # default = auto
    lo, hi = output_range(ds)
    none = read_image(path, channels=1, scaling=ScalingConfig(window="none"))[:, :, 0]
    np.testing.assert_allclose(none, (ds.pixel_array - lo) / (hi - lo), atol=1e-4)


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mono1.dcm"
    ds.save_as(inverted)
    normal = read_dicom(_file("MR_small.dcm"))
    np.testing.assert_allclose(read_dicom(inverted), 1.0 - normal, atol=1e-6)


def test_ybr_is_converted_to_rgb():
    path = _file("SC_ybr_full_422_uncompressed.dcm")
    rgb = pixel_array(path)  # pydicom's YBR_FULL_422 -> RGB conversion
    raw = pixel_array(path, raw=True)
    got = read_image(path, channels=3)
    np.testing.assert_allclose(got, rgb / 255.0, atol=1e-6)
    assert not np.allclose(got, raw / 255.0, atol=0.05)


def test_multi_frame_gives_first_frame_with_a_note(caplog):
    path = _file("rtdose.dcm")  # 15 frames of 10x10
    with caplog.at_level(logging.WARNING, logger="dinotune.data.dicom"):
        first = dicom_modality(path)
    ds = pydicom.dcmread(path)
    np.testing.assert_allclose(first, apply_modality_lut(pixel_array(path, index=0), ds), rtol=1e-6)
    np.testing.assert_allclose(dicom_modality(path, frame=3), apply_modality_lut(pixel_array(path, index=3), ds))
    assert any("15 frames" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match=r"frame 15 requested.*15 frame"):
        dicom_modality(path, frame=15)


def test_folder_of_dicom_files_is_found_and_checked(tmp_path):
    root = tmp_path / "ds"
    for cls, name in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        for i in range(5):
            dst = root / cls / f"{i}.dcm"
            dst.parent.mkdir(parents=True, exist_ok=True)
            ds = pydicom.dcmread(_file(name))
            ds.PixelData = (ds.pixel_array + i).astype(ds.pixel_array.dtype).tobytes()  # distinct files
            ds.save_as(dst)
    assert detect_layout(root) == "imagefolder"
    spec = load_dataset(root, auto_split=False)
    assert spec.classes == ["ct", "mr"] and len(spec.splits["all"]) == 10
    report = check_dataset(root, min_per_class=1)
    assert not report.errors, report.format_text()
    assert report.channels == {"1": 10}


def test_dicom_named_without_extension_is_listed(tmp_path):
    root = tmp_path / "scanner"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        shutil.copy(_file("CT_small.dcm"), root / cls / "IM0001")
        shutil.copy(_file("MR_small.dcm"), root / cls / "1.2.840.113619.2.55.320")
        (root / cls / "README").write_text("not an image")
        (root / cls / "notes.123").write_text("not an image either")
    names = sorted(s.path.name for s in load_dataset(root, auto_split=False).splits["all"])
    assert names == ["1.2.840.113619.2.55.320", "1.2.840.113619.2.55.320", "IM0001", "IM0001"]
    assert read_image(root / "a" / "IM0001").shape == (128, 128, 3)


def test_missing_pydicom_gives_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"pip install 'dinotune\[medical\]'"):
        read_image(_file("CT_small.dcm"))


def test_window_config_is_validated():
    assert validate(DataConfig, {"root": ".", "scaling": {"window": "ct-brain"}}).scaling.window == "ct-brain"
    with pytest.raises(ConfigError, match=r"ct-lungs.*ct-lung"):
        validate(DataConfig, {"root": ".", "scaling": {"window": "ct-lungs"}})


def test_dicom_upload_is_served_like_training_and_bits_stored_is_declared():
    from dinotune.data.decode import decode_raw
    from dinotune.serve.images import decode_upload

    path = _file("MR_small.dcm")
    with open(path, "rb") as handle:
        served = decode_upload(handle.read(), "mr", channels=3, max_pixels=10**6)
    np.testing.assert_array_equal(served, read_image(path, channels=3))
    twelve = _file("examples_overlay.dcm")  # MR, 12 bits stored in 16, unsigned, window 450/200
    raw, info, fmt = decode_raw(twelve)
    assert (fmt, raw.dtype, info.bits) == ("dicom", np.uint16, 12)
    none = read_image(twelve, channels=1, scaling=ScalingConfig(window="none"))[:, :, 0]
    np.testing.assert_allclose(none, raw[:, :, 0] / 4095.0, atol=1e-6)  # BitsStored, not 65535


def test_compressed_dicom_decodes_with_pylibjpeg():
    pytest.importorskip("pylibjpeg")
    path = _file("JPGExtended.dcm")  # JPEG Extended, 12-bit NM
    got = read_image(path, channels=1, scaling=ScalingConfig(window="none"))[:, :, 0]
    np.testing.assert_allclose(got, pixel_array(path) / 4095.0, atol=1e-6)  # its 12 bits, not 65535
