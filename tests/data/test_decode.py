from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dinotune.data.config import ScalingConfig
from dinotune.data.decode import image_info, read_image, read_mask, read_raw, sniff_format
from dinotune.errors import DataError
from tests.data.conftest import rgb, save, write_truncated


def test_exif_orientation_applied_by_pixel_content(tricky):
    img = read_image(tricky["exif"])
    assert img.shape == (40, 20, 3) and img.dtype == np.float32
    top, bottom = img[5, 10], img[34, 10]
    assert top[0] > 0.8 and top[2] < 0.2  # red on top
    assert bottom[2] > 0.8 and bottom[0] < 0.2  # blue at the bottom
    assert (image_info(tricky["exif"]).width, image_info(tricky["exif"]).height) == (20, 40)


def test_16bit_tiff_scaled_by_65535_and_gray_to_rgb(tricky):
    img = read_image(tricky["tiff16"], channels=3)
    assert img.shape == (24, 32, 3)
    assert img.min() == 0.0 and img.max() == pytest.approx(1.0)
    assert np.array_equal(img[..., 0], img[..., 2])
    one = read_image(tricky["tiff16"], channels=1)
    assert one.shape == (24, 32, 1)
    assert read_raw(tricky["tiff16"]).dtype == np.uint16
    halved = read_image(tricky["tiff16"], channels=1, scaling=ScalingConfig(divisor=32767.5))
    assert halved.max() == 1.0 and np.mean(halved == 1.0) > 0.4  # clipped above the divisor


def test_four_band_tiff_kept_and_mismatch_explained(tricky):
    img = read_image(tricky["tiff4"], channels=4)
    assert img.shape == (20, 30, 4)
    np.testing.assert_allclose(img[0, 0], np.array([1000, 2000, 3000, 4000]) / 65535, rtol=1e-5)
    with pytest.raises(DataError, match=r"bands4\.tif.*4 channel.*channels=5"):
        read_image(tricky["tiff4"], channels=5)


def test_percentile_scaling_per_band(tricky):
    scaling = ScalingConfig(mode="percentile", low=[1000, 2000, 2000, 0], high=[2000, 3000, 4000, 8000])
    img = read_image(tricky["tiff4"], channels=4, scaling=scaling)
    np.testing.assert_allclose(img[0, 0], [0.0, 0.0, 0.5, 0.5])


def test_multipage_tiff_pages_become_channels(tricky):
    img = read_image(tricky["multipage"], channels=3)
    assert img.shape == (16, 24, 3)
    np.testing.assert_allclose(img[0, 0], np.array([0, 100, 200]) / 255)


def test_grayscale_png_three_or_one_channel(tricky):
    three = read_image(tricky["gray"], channels=3)
    one = read_image(tricky["gray"], channels=1)
    assert three.shape == (32, 32, 3) and one.shape == (32, 32, 1)
    assert three[0, 31, 1] == pytest.approx(248 / 255)
    np.testing.assert_array_equal(three[..., 0], one[..., 0])


def test_rgba_png_drops_alpha(tricky):
    img = read_image(tricky["rgba"])
    assert img.shape == (32, 32, 3)
    np.testing.assert_allclose(img[0, 0], np.array([10, 20, 30]) / 255)


def test_rgb_to_one_channel_uses_luma(tmp_path):
    p = save(tmp_path / "red.png", np.dstack([np.full((4, 4), 255, np.uint8), *[np.zeros((4, 4), np.uint8)] * 2]))
    assert read_image(p, channels=1)[0, 0, 0] == pytest.approx(76 / 255, abs=1 / 255)


def test_webp_bmp_and_16bit_colour_png(tricky, tmp_path):
    assert read_image(tricky["webp"]).shape == (16, 16, 3)
    assert read_image(tricky["bmp"]).shape == (16, 16, 3)
    arr = np.zeros((8, 8, 3), np.uint16)
    arr[..., 0] = 65535  # red, written by OpenCV as BGR
    cv2.imwrite(str(tmp_path / "c16.png"), arr[..., ::-1])
    raw = read_raw(tmp_path / "c16.png")
    assert raw.dtype == np.uint16 and raw[0, 0].tolist() == [65535, 0, 0]


def test_palette_mask_gives_indices(tricky):
    mask = read_mask(tricky["mask"])
    assert mask.shape == (16, 16)
    assert sorted(np.unique(mask).tolist()) == [0, 1, 2, 255]


def test_rgb_mask_needs_colours(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[:2] = (255, 0, 0)
    p = save(tmp_path / "m.png", arr)
    with pytest.raises(DataError, match="index PNG"):
        read_mask(p)
    assert read_mask(p, colours=[(0, 0, 0), (255, 0, 0)]).tolist() == [[1] * 4] * 2 + [[0] * 4] * 2


@pytest.mark.parametrize("kind", ["zero", "text", "jpeg", "png"])
def test_bad_files_raise_dataerror_naming_file(tmp_path, kind):
    p = tmp_path / f"bad_{kind}.{'png' if kind == 'png' else 'jpg'}"
    if kind == "zero":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello")
    else:
        write_truncated(p, kind.upper())
    with pytest.raises(DataError) as exc:
        read_image(p)
    assert str(p) in str(exc.value)
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or exc.value.__suppress_context__  # no chained PIL traceback


def test_decompression_bomb_guard(tmp_path):
    p = save(tmp_path / "big.png", rgb(64, 64))
    with pytest.raises(DataError, match=r"big\.png.*max_pixels=1000"):
        read_image(p, max_pixels=1000)
    assert read_image(p, max_pixels=64 * 64).shape == (64, 64, 3)


def test_sniff_format(tricky, tmp_path: Path):
    assert sniff_format(tricky["exif"]) == "jpeg"
    assert sniff_format(tricky["tiff16"]) == "tiff"
    (tmp_path / "x.png").write_text("GIF? no")
    assert sniff_format(tmp_path / "x.png") is None
