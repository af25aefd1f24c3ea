"""NIfTI volumes as one sample per slice (`data.volumes: slices`), with label volumes for segmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")

from dinotune.data.decode import decode_raw, read_image, read_mask  # noqa: E402
from dinotune.data.formats import load_dataset  # noqa: E402
from dinotune.data.nifti import read_nifti  # noqa: E402
from dinotune.data.volumes import slice_files  # noqa: E402


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINOTUNE_HOME", str(tmp_path / "home"))  # slices are written under $DINOTUNE_HOME/slices


def _volume(path: Path, seed: int, shape=(20, 24, 7), scaled: bool = True) -> Path:
    data = np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)
    img = nibabel.Nifti1Image(data, np.eye(4))
    if scaled:
        img.header.set_slope_inter(0.5, -20.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(img, path)
    return path


@pytest.mark.parametrize("axis", [0, 2])
def test_every_slice_decodes_to_the_volumes_own_values(tmp_path: Path, axis: int) -> None:
    volume = _volume(tmp_path / "ct.nii.gz", 0)
    files = slice_files(volume, axis, tmp_path / "slices")
    assert len(files) == (20, 24, 7)[axis]
    for k in (0, len(files) // 2, len(files) - 1):
        arr, _, fmt = decode_raw(files[k])
        assert fmt == "nifti" and np.array_equal(arr, read_nifti(volume, axis, k))
    assert slice_files(volume, axis, tmp_path / "slices") == files  # written once, then reused
    from dinotune.data.config import ScalingConfig

    middle = read_image(volume, 1, ScalingConfig(slice_axis=axis))
    assert np.array_equal(read_image(files[len(files) // 2], 1), middle)  # same intensity rule as before


def test_classification_volumes_become_slices_kept_in_one_split(tmp_path: Path) -> None:
    root = tmp_path / "vols"
    for i in range(10):
        _volume(root / ("tumour" if i % 2 else "normal") / f"v{i}.nii.gz", i)
    spec = load_dataset(root, volumes="slices", val_fraction=0.2, test_fraction=0.2)
    assert sum(len(s) for s in spec.splits.values()) == 10 * 7
    home = {}
    for split, samples in spec.splits.items():
        for sample in samples:
            home.setdefault(sample.group, set()).add(split)
    assert len(home) == 10 and all(len(v) == 1 for v in home.values())
    assert {len(spec.splits[n]) for n in ("val", "test")} == {14}  # 2 volumes x 7 slices each
    assert sum(len(s) for s in load_dataset(root).splits.values()) == 10  # default: one (middle) slice each


def test_label_volumes_are_sliced_with_their_images(tmp_path: Path) -> None:
    root = tmp_path / "seg"
    for i in range(3):
        _volume(root / "train" / "images" / f"v{i}.nii.gz", i, scaled=False)
        labels = (np.arange(20 * 24 * 7).reshape(20, 24, 7) % 3).astype(np.float32)  # integral floats, as tools write
        (root / "train" / "masks").mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(labels, np.eye(4)), root / "train" / "masks" / f"v{i}.nii.gz")
    spec = load_dataset(root, volumes="slices")
    assert spec.splits["train"][0].path.is_relative_to(tmp_path / "home" / "slices")
    pairs = spec.splits["train"]
    assert len(pairs) == 3 * 7
    image, mask = pairs[4].path, pairs[4].label
    assert read_mask(mask).shape == read_image(image, 1).shape[:2] == (20, 24)
    assert np.array_equal(read_mask(mask), (np.arange(20 * 24 * 7).reshape(20, 24, 7) % 3)[:, :, 4])


def test_segmentation_run_on_label_volumes(tmp_path: Path) -> None:
    from dinotune.verbs.segment import run_segment
    from tests.training_fixtures import segment_config

    root = tmp_path / "seg"
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            data = np.zeros((32, 32, 4), np.int16)
            data[8:24, 8:24] = 500
            data[8:24, 8:24, i % 4] = 900
            for folder, values in (("images", data), ("masks", (data > 0).astype(np.uint8))):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                nibabel.save(nibabel.Nifti1Image(values, np.eye(4)), root / split / folder / f"v{i}.nii")
    data = {"root": str(root), "image_size": 32, "num_workers": 0, "augment": "none", "channels": 1,
            "num_classes": 2, "volumes": "slices"}  # fmt: skip
    result = run_segment(segment_config(root, tmp_path / "run", data=data, trainer={"max_epochs": 1}))
    assert result.metrics["val"]["images"] == 4  # the val volume's 4 slices, each evaluated at full size


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "rtdose.dcm"])
def test_multi_frame_dicom_frames_become_samples_with_the_files_values(tmp_path: Path, name: str) -> None:
    pytest.importorskip("pydicom")
    import shutil

    from pydicom.data import get_testdata_file

    from dinotune.data.dicom import read_dicom

    source = Path(get_testdata_file(name, download=False))
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        shutil.copy(source, root / cls / name)
    spec = load_dataset(root, volumes="slices", auto_split=False)
    frames = [s for s in spec.splits["all"] if s.label == 0]
    n = {"examples_ybr_color.dcm": 30, "rtdose.dcm": 15}[name]
    assert len(frames) == n and len({s.group for s in frames}) == 1
    channels = 3 if "color" in name else 1
    for k in (0, n - 1):
        # the copy, not pydicom's file: its once-per-file multi-frame note stays for test_dicom.py
        assert np.array_equal(read_image(frames[k].path, channels), read_dicom(root / "a" / name, frame=k))
