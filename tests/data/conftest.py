"""Generators of tricky and broken image files, written to tmp_path (nothing is downloaded)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def rgb(h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def write_exif_rotated_jpeg(path: Path) -> Path:
    """Stored 40 wide x 20 tall, left half red / right half blue, EXIF orientation 6 (turn 90 deg CW).

    Displayed correctly it is 20 wide x 40 tall with red on top and blue at the bottom.
    """
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = RED
    arr[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(path, arr, exif=exif, quality=95)


def write_truncated(path: Path, fmt: str) -> Path:
    buf = io.BytesIO()
    Image.fromarray(rgb(64, 64, seed=7)).save(buf, format=fmt)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def write_tiff16(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    tifffile.imwrite(path, arr)
    return path


def write_tiff_4band(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((20, 30, 4), np.uint16)
    for b in range(4):
        arr[:, :, b] = 1000 * (b + 1)
    tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="contig")
    return path


def write_multipage_tiff(path: Path) -> Path:
    """Three 8-bit pages written by PIL (save_all), values 0, 100, 200."""
    pages = [Image.fromarray(np.full((16, 24), v, np.uint8)) for v in (0, 100, 200)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def write_palette_mask(path: Path, arr: np.ndarray) -> Path:
    m = Image.fromarray(arr.astype(np.uint8))
    m.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [255, 255, 255] * 252)
    path.parent.mkdir(parents=True, exist_ok=True)
    m.save(path)
    return path


@pytest.fixture
def tricky(tmp_path: Path) -> dict[str, Path]:
    """Valid but unusual files."""
    d = tmp_path / "tricky"
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    rgba = np.dstack(
        [
            np.full((32, 32), 10, np.uint8),
            np.full((32, 32), 20, np.uint8),
            np.full((32, 32), 30, np.uint8),
            np.full((32, 32), 0, np.uint8),
        ]
    )
    return {
        "exif": write_exif_rotated_jpeg(d / "exif.jpg"),
        "tiff16": write_tiff16(d / "gray16.tif"),
        "tiff4": write_tiff_4band(d / "bands4.tif"),
        "gray": save(d / "gray.png", gray),
        "rgba": save(d / "rgba.png", rgba),
        "multipage": write_multipage_tiff(d / "pages.tif"),
        "mask": write_palette_mask(d / "mask.png", np.array([[0, 1], [2, 255]]).repeat(8, 0).repeat(8, 1)),
        "webp": save(d / "img.webp", rgb(16, 16), lossless=True),
        "bmp": save(d / "img.bmp", rgb(16, 16)),
    }


def make_defect_imagefolder(root: Path, n_cat: int = 52, n_dog: int = 4) -> dict[str, Path]:
    """ImageFolder train/val/test with every classification defect; returns the defect files."""
    for i in range(n_cat):
        split = "train" if i < n_cat - 6 else ("val" if i < n_cat - 3 else "test")
        save(root / split / "cat" / f"cat_{i:03d}.png", rgb(seed=100 + i))
    for i in range(n_dog):
        save(root / ("train" if i < n_dog - 1 else "val") / "dog" / f"dog_{i}.png", rgb(seed=500 + i))
    t = root / "train" / "cat"
    defects = {
        "zero": t / "zero.jpg",
        "truncated_jpeg": write_truncated(t / "trunc.jpg", "JPEG"),
        "truncated_png": write_truncated(t / "trunc.png", "PNG"),
        "text": t / "notes.jpg",
        "tiny": save(t / "tiny.png", rgb(8, 8, seed=3)),
        "dup_within_a": save(t / "dup_a.png", rgb(seed=900)),
        "dup_within_b": save(t / "dup_b.png", rgb(seed=900)),
        "dup_cross_train": save(t / "leak.png", rgb(seed=901)),
        "dup_cross_val": save(root / "val" / "cat" / "leak_copy.png", rgb(seed=901)),
        "gray": save(t / "gray.png", np.full((32, 32), 128, np.uint8)),
        "tiff16": write_tiff16(t / "sixteen.tif"),
    }
    defects["zero"].write_bytes(b"")
    defects["text"].write_text("this is not a jpeg\n")
    return defects


def make_defect_segmentation(root: Path) -> dict[str, Path]:
    """images/ + masks/ with every segmentation defect; classes.yaml declares 3 classes."""
    for i in range(4):
        save(root / "images" / f"ok_{i}.png", rgb(seed=i))
        write_palette_mask(root / "masks" / f"ok_{i}.png", np.tile(np.array([0, 1, 2, 255]), (32, 8)))
    (root / "classes.yaml").write_text("classes: [background, crack, stain]\n")
    return {
        "size_mismatch": write_palette_mask(root / "masks" / "bigmask.png", np.zeros((40, 40))),
        "size_mismatch_image": save(root / "images" / "bigmask.png", rgb(seed=50)),
        "bad_values": write_palette_mask(root / "masks" / "values.png", np.full((32, 32), 7)),
        "bad_values_image": save(root / "images" / "values.png", rgb(seed=51)),
        "image_without_mask": save(root / "images" / "lonely.png", rgb(seed=52)),
        "mask_without_image": write_palette_mask(root / "masks" / "orphan.png", np.zeros((32, 32))),
    }
