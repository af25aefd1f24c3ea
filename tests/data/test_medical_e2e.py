"""DICOM folders and NIfTI volumes end to end: a probe and a segmentation run, then predict and serve agree.

DICOM files are pydicom's bundled CT_small/MR_small, re-labelled per patient in tmp_path; NIfTI volumes are
generated in tmp_path. Nothing is copied into the repository; the backbone is the tiny random test ViT.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")
from fastapi.testclient import TestClient  # noqa: E402

from dinotune.data.decode import read_image  # noqa: E402
from dinotune.evaluation.segment import predict_masks  # noqa: E402
from dinotune.serve import ServeConfig, create_app  # noqa: E402
from dinotune.verbs.predict import predict  # noqa: E402
from dinotune.verbs.probe import probe  # noqa: E402
from dinotune.verbs.segment import run_segment  # noqa: E402
from tests.data.test_groups import dicom_slice  # noqa: E402
from tests.training_fixtures import segment_config  # noqa: E402

FAST = {"sweep": {"epochs": 10, "lrs": [1e-2], "weight_decays": [0.0]}, "progress": False}
SPLITS = {"train": 4, "val": 2, "test": 2}


def _served(run: Path, path: Path) -> dict:
    with TestClient(create_app(run, ServeConfig(max_wait_ms=0))) as client:
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        response = client.post("/predict", files={"file": (path.name, path.read_bytes(), "application/octet-stream")})
    assert response.status_code == 200, response.text
    return response.json()


def _classify_end_to_end(root: Path, tmp_path: Path, image: Path) -> None:
    result = probe({"root": root, "image_size": 32, "num_workers": 0}, backbone="random:vit_test16",
                   out=tmp_path / "run", cache_dir=tmp_path / "cache", **FAST)  # fmt: skip
    assert result.metrics["summary"]  # trained and evaluated on the decoded slices
    (local,) = predict(result.run_dir, [image])
    answer = _served(result.run_dir, image)["predictions"][0]
    assert answer["label"] == local.label and answer["probability"] == pytest.approx(local.probability, abs=1e-4)


def _segment_end_to_end(root: Path, tmp_path: Path, image: Path) -> None:
    cfg = segment_config(root, tmp_path / "seg", trainer={"max_epochs": 2, "progress_bar": False},
                         data={"root": str(root), "image_size": 32, "num_workers": 0, "augment": "none",
                               "channels": 1, "num_classes": 2})  # fmt: skip
    run = run_segment(cfg).run_dir
    (mask_file,) = predict_masks(run, [image], tmp_path / "masks", device="cpu")
    local = np.asarray(Image.open(mask_file))
    served = _served(run, image)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(served["mask_png"]))))
    assert mask.shape == local.shape == read_image(image, 1).shape[:2] and (mask == local).mean() >= 0.999


def _dicom_classes(root: Path) -> Path:
    for split, n in SPLITS.items():
        for i in range(n):
            dicom_slice(root / split / "ct" / f"{i}.dcm", f"{split}-ct-{i}", source="CT_small.dcm")
            dicom_slice(root / split / "mr" / f"{i}.dcm", f"{split}-mr-{i}", source="MR_small.dcm")
    return root


def test_probe_on_a_dicom_folder_then_predict_and_serve_agree(tmp_path: Path) -> None:
    root = _dicom_classes(tmp_path / "dicom")
    _classify_end_to_end(root, tmp_path, root / "test" / "ct" / "0.dcm")


def test_segmentation_on_a_dicom_folder_then_predict_and_serve_agree(tmp_path: Path) -> None:
    root = tmp_path / "dicom_seg"
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            path = dicom_slice(root / split / "images" / f"ct{i}.dcm", f"{split}{i}")
            hu = pydicom.pixels.apply_modality_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path))
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray((hu > 0).astype(np.uint8)).save(root / split / "masks" / f"ct{i}.png")  # tissue vs air
    _segment_end_to_end(root, tmp_path, root / "val" / "images" / "ct0.dcm")


def _volume(path: Path, seed: int, bright: bool) -> Path:
    """A 40 x 48 x 9 int16 volume (CT-like values) with a bright or dark middle slice."""
    rng = np.random.default_rng(seed)
    data = rng.normal(-200, 100, (40, 48, 9)).astype(np.int16)
    data[10:30, 12:36, 4] += 600 if bright else -600
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
    return path


def test_probe_on_nifti_volumes_then_predict_and_serve_agree(tmp_path: Path) -> None:
    root = tmp_path / "nifti"
    for s, (split, n) in enumerate(SPLITS.items()):
        for i in range(n):
            _volume(root / split / "bright" / f"{i}.nii.gz", 100 * s + 2 * i, True)
            _volume(root / split / "dark" / f"{i}.nii.gz", 100 * s + 2 * i + 1, False)
    _classify_end_to_end(root, tmp_path, root / "test" / "bright" / "0.nii.gz")


def test_segmentation_on_nifti_volumes_then_predict_and_serve_agree(tmp_path: Path) -> None:
    root = tmp_path / "nifti_seg"
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            _volume(root / split / "images" / f"v{i}.nii.gz", i, bool(i % 2))
            mask = np.zeros((40, 48), np.uint8)
            mask[10:30, 12:36] = 1
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / split / "masks" / f"v{i}.png")  # the middle slice's structure
    _segment_end_to_end(root, tmp_path, root / "val" / "images" / "v0.nii.gz")
