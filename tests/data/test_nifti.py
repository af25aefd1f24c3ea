"""NIfTI volumes as 2-D slices, checked against nibabel's own reading of its bundled test files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")
from nibabel.testing import data_path  # noqa: E402

from dinotune.data.budget import BudgetError  # noqa: E402
from dinotune.data.config import ScalingConfig  # noqa: E402
from dinotune.data.decode import image_info, read_image, read_raw, sniff_format  # noqa: E402
from dinotune.data.formats import detect_layout, load_dataset  # noqa: E402
from dinotune.data.nifti import read_nifti, slice_count  # noqa: E402

ANAT = os.path.join(data_path, "anatomical.nii")  # 33x41x25, big-endian int16
STANDARD = os.path.join(data_path, "standard.nii.gz")  # 4x5x7 uint8, gzipped


def test_middle_slice_equals_nibabel_and_keeps_signed_values():
    volume = np.asanyarray(nibabel.load(ANAT).dataobj)
    assert sniff_format(Path(ANAT)) == "nifti"
    raw = read_raw(ANAT)
    np.testing.assert_array_equal(raw[:, :, 0], volume[:, :, 12])
    img = read_image(ANAT, channels=1)
    np.testing.assert_allclose(img[:, :, 0], (volume[:, :, 12] + 32768.0) / 65535.0, rtol=1e-6)
    info = image_info(ANAT)
    assert (info.height, info.width, info.pages, info.dtype) == (33, 41, 25, "int16")


@pytest.mark.parametrize(("axis", "shape"), [(0, (41, 25)), (1, (33, 25)), (2, (33, 41))])
def test_slice_axis_is_chosen_by_config(axis, shape):
    volume = np.asanyarray(nibabel.load(ANAT).dataobj)
    img = read_image(ANAT, channels=1, scaling=ScalingConfig(slice_axis=axis))
    assert img.shape[:2] == shape
    middle = np.take(volume, volume.shape[axis] // 2, axis=axis)
    np.testing.assert_allclose(img[:, :, 0], (middle + 32768.0) / 65535.0, rtol=1e-6)
    assert slice_count(ANAT, axis) == volume.shape[axis]
    np.testing.assert_array_equal(read_nifti(ANAT, axis, 0)[:, :, 0], np.take(volume, 0, axis=axis))


def test_gzipped_uint8_volume_and_folder_layout(tmp_path):
    volume = np.asanyarray(nibabel.load(STANDARD).dataobj)
    np.testing.assert_array_equal(read_image(STANDARD, channels=1)[:, :, 0], volume[:, :, 3] / np.float32(255))
    for cls, src in (("a", ANAT), ("b", STANDARD)):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        shutil.copy(src, tmp_path / "ds" / cls / os.path.basename(src))
    assert detect_layout(tmp_path / "ds") == "imagefolder"
    assert sorted(s.path.name for s in load_dataset(tmp_path / "ds", auto_split=False).splits["all"]) == [
        "anatomical.nii",
        "standard.nii.gz",
    ]


def test_budget_counts_one_slice():
    assert read_image(ANAT, channels=1, max_pixels=41 * 33).shape == (33, 41, 1)
    with pytest.raises(BudgetError, match="max_pixels"):
        read_image(ANAT, channels=1, max_pixels=41 * 33 - 1)
