"""Depth data: image + depth-map pairs, decoded to metres with invalid pixels marked, augmented together.

Layout (docs/depth.md): `images/<split>/x.png` beside `depth/<split>/x.png|.tif` (split folders optional,
then the pairs are split here as any other dataset). A depth map is a 16-bit PNG whose values times
`data.depth_scale` are metres (default 1/1000: millimetres, as NYU/KITTI-style PNGs store them), or a
float32 TIFF already in metres (the scale is not applied). A pixel is valid when its depth is finite and
inside (`data.min_depth`, `data.max_depth`]; 0, NaN and inf mean "no measurement". Invalid pixels are
stored as 0 in the tensors and left out of the loss and the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from pydantic import Field, model_validator
from torch.utils.data import Dataset

from dinotune.data.config import DataConfig, ScalingConfig
from dinotune.data.decode import read_image
from dinotune.data.formats import Pairing, match_by_key, paired_samples
from dinotune.data.spec import DatasetSpec, Sample, split_subfolders
from dinotune.data.splits import apply_split
from dinotune.errors import DataError

DEPTH_DIR = "depth"
DEPTH_SUFFIXES = (".png", ".tif", ".tiff")


class DepthDataConfig(DataConfig):
    """The `data:` section of a depth config: the common fields plus how depth files are read."""

    task: Literal["depth"] | None = Field("depth", description="depth (image + depth-map pairs).")  # type: ignore[assignment]
    depth_scale: float = Field(
        0.001, gt=0, description="16-bit PNG depth: metres per stored unit (0.001 = millimetres); float TIFF: unused."
    )
    min_depth: float = Field(0.001, ge=0, description="Depths <= this are invalid (no measurement); the first bin.")
    max_depth: float = Field(10.0, gt=0, description="Depths above this are invalid; also the last bin (metres).")

    @model_validator(mode="after")
    def _range(self) -> DepthDataConfig:
        if self.max_depth <= self.min_depth:
            raise ValueError(f"data.max_depth={self.max_depth} must be greater than data.min_depth={self.min_depth}")
        return self


def is_depth_layout(root: Path) -> bool:
    """`root` (or one of its split folders) holds images/ beside depth/."""
    if not root.is_dir():
        return False
    candidates = [root, *split_subfolders(root).values()]
    return any((c / "images").is_dir() and (c / DEPTH_DIR).is_dir() for c in candidates)


def _groups(root: Path) -> dict[str, tuple[Path, Path]]:
    """Per split: (images folder, depth folder)."""
    outer = {s: d for s, d in split_subfolders(root).items() if (d / "images").is_dir()}
    if outer:
        return {s: (d / "images", d / DEPTH_DIR) for s, d in outer.items()}
    images, depth = root / "images", root / DEPTH_DIR
    if not images.is_dir() or not depth.is_dir():
        raise DataError(
            f"{root}: expected images/ and depth/ folders (optionally in train/ val/ test/); see docs/depth.md"
        )
    inner = split_subfolders(images)
    return {s: (d, depth / d.name) for s, d in inner.items()} if inner else {"all": (images, depth)}


def depth_pairs(root: Path) -> dict[str, Pairing]:
    """Per split: (image, depth) pairs, images without a depth map, depth maps without an image."""
    return {split: match_by_key(image_dir, depth_dir) for split, (image_dir, depth_dir) in _groups(Path(root)).items()}


def load_depth_dataset(
    root: Path | str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    split_file: Path | None = None,
    auto_split: bool = True,
) -> DatasetSpec:
    """The pairs under `root` as a DatasetSpec (task `depth`, each sample's label is its depth file)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} does not exist or is not a folder; give the folder holding images/ and depth/")
    splits = paired_samples(depth_pairs(root), root, "depth map")
    if not any(splits.values()):
        raise DataError(f"{root}: no image has a depth map of the same name under depth/; see docs/depth.md")
    spec = DatasetSpec("depth", "depth", root, ["depth"], splits)
    if auto_split and set(spec.splits) == {"all"}:
        spec = apply_split(spec, val_fraction, test_fraction, seed, split_file)
    return spec


def read_depth(path: Path | str, scale: float = 0.001) -> np.ndarray:
    """Depth in metres (float32 HxW): a 16-bit (or 8-bit) PNG times `scale`, a float TIFF as stored."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            raw = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as image:
                raw = np.asarray(image)
    except Exception as err:  # PIL and tifffile raise many types for broken files
        raise DataError(f"{path}: not a readable depth map ({str(err).splitlines()[0][:120]})") from None
    raw = np.squeeze(raw)
    if raw.ndim != 2:
        raise DataError(f"{path}: a depth map has one channel, this file has shape {raw.shape}; save depth alone")
    if raw.dtype.kind == "f":
        return raw.astype(np.float32)
    if raw.dtype.kind not in "ui":
        raise DataError(f"{path}: depth dtype {raw.dtype} is neither an integer PNG nor a float TIFF")
    return (raw.astype(np.float64) * scale).astype(np.float32)


def valid_depth(depth: np.ndarray | torch.Tensor, min_depth: float, max_depth: float) -> Any:
    """Pixels with a measurement: finite and inside (min_depth, max_depth]."""
    lib = torch if isinstance(depth, torch.Tensor) else np
    return lib.isfinite(depth) & (depth > min_depth) & (depth <= max_depth)


def clean_depth(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """Invalid pixels set to 0 (finite, so augmentations and batching are safe)."""
    return np.where(valid_depth(depth, min_depth, max_depth), depth, 0.0).astype(np.float32)


class DepthTransform:
    """Image + depth together: geometric ops move both (depth with nearest, so no value is made up
    between a measurement and a hole), photometric ops touch the image only; then normalise."""

    def __init__(self, ops: list[Any], mean: Sequence[float], std: Sequence[float]) -> None:
        self.pipeline = A.Compose(ops)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, image: np.ndarray, depth: np.ndarray | None = None) -> dict[str, Any]:
        out = self.pipeline(image=image) if depth is None else self.pipeline(image=image, mask=depth)
        x = (out["image"].astype(np.float32) - self.mean) / self.std
        result: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))}
        if depth is not None:
            result["depth"] = torch.from_numpy(np.ascontiguousarray(out["mask"], dtype=np.float32))
        return result


def depth_transform(cfg: DataConfig, mean: Sequence[float], std: Sequence[float], *, train: bool) -> DepthTransform:
    """Shorter side to image_size and a square crop (random in training, centred otherwise); training adds
    a horizontal flip (unless data.hflip=false) and brightness/contrast; `augment: none` keeps only the crop."""
    size = cfg.image_size
    nearest = cv2.INTER_NEAREST
    ops: list[Any] = [A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_AREA, mask_interpolation=nearest)]
    if train and cfg.augment != "none":
        ops.append(A.RandomCrop(size, size))
        if cfg.hflip is not False:
            ops.append(A.HorizontalFlip(p=0.5))
        ops.append(A.RandomBrightnessContrast(0.2, 0.2, p=0.5))  # an ImageOnlyTransform: depth untouched
    else:
        ops.append(A.CenterCrop(size, size))
    return DepthTransform(ops, mean, std)


class FullSizeDepth(DepthTransform):
    """No resize, no crop: evaluation sees every image and depth map at its own size."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__([], mean, std)


class DepthDataset(Dataset):
    """Items: `image` CHW float, `depth` HxW metres (0 = invalid), `path`. A file that cannot be read
    raises a one-line DataError naming it (a depth map cannot be replaced by another sample's)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: DepthTransform,
        *,
        channels: int = 3,
        depth_scale: float = 0.001,
        min_depth: float = 0.001,
        max_depth: float = 10.0,
        scaling: ScalingConfig | None = None,
    ) -> None:
        self.samples, self.transform, self.channels = list(samples), transform, channels
        self.depth_scale, self.min_depth, self.max_depth, self.scaling = depth_scale, min_depth, max_depth, scaling

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = read_image(sample.path, self.channels, self.scaling)
        depth = read_depth(Path(str(sample.label)), self.depth_scale)
        if depth.shape != image.shape[:2]:
            raise DataError(
                f"{sample.label}: depth map is {depth.shape[1]}x{depth.shape[0]} but its image {sample.path.name} is "
                f"{image.shape[1]}x{image.shape[0]}; save depth at the image's size"
            )
        out = self.transform(image, clean_depth(depth, self.min_depth, self.max_depth))
        return {"image": out["image"], "depth": out["depth"], "path": str(sample.path)}


def depth_datasets(
    cfg: DepthDataConfig, mean: Sequence[float], std: Sequence[float], run_dir: Path, channels: int
) -> tuple[DatasetSpec, dict[str, DepthDataset]]:
    """Spec + one dataset per split (train augmented); an automatic split is written to run_dir/splits.json."""
    spec = load_depth_dataset(
        cfg.root,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.split_seed,
        split_file=cfg.split_file or run_dir / "splits.json",
    )
    sets = {
        name: DepthDataset(
            samples,
            depth_transform(cfg, mean, std, train=name == "train"),
            channels=channels,
            depth_scale=cfg.depth_scale,
            min_depth=cfg.min_depth,
            max_depth=cfg.max_depth,
            scaling=cfg.scaling,
        )
        for name, samples in spec.splits.items()
    }
    return spec, sets
