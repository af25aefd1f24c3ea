"""torch Datasets over a DatasetSpec's samples, plus class weights and a weighted sampler.

Bad files are the norm in real datasets: with `on_bad_file="skip"` a file that cannot be decoded is
logged once (naming it) and replaced by the next readable sample, so one broken JPEG does not kill a
ten-hour run; with `"error"` it raises a one-line DataError naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from dinotune.data.config import DEFAULT_MAX_PIXELS, DataConfig, ScalingConfig
from dinotune.data.decode import build_lut, load_class_mapping, read_image, read_mask
from dinotune.data.formats import DatasetSpec, Sample, load_dataset
from dinotune.data.transforms import transform_from_config
from dinotune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TransformFn = Callable[..., dict[str, Any]]


def _to_tensor(image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Fallback transform: HWC [0, 1] -> CHW tensor, no resizing or normalisation."""
    out: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
    if mask is not None:
        out["mask"] = torch.from_numpy(mask.astype(np.int64))
    return out


class _BaseDataset(Dataset):
    """Shared bad-file handling: decode in `_load`, skip or raise on DataError."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: TransformFn | None,
        channels: int,
        on_bad_file: str,
        scaling: ScalingConfig | None,
        max_pixels: int,
    ) -> None:
        if on_bad_file not in ("skip", "error"):
            raise ConfigError(f"on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
        self.samples = list(samples)
        self.transform = transform or _to_tensor
        self.channels, self.on_bad_file = channels, on_bad_file
        self.scaling, self.max_pixels = scaling, max_pixels
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _image(self, path: Path) -> np.ndarray:
        return read_image(path, self.channels, self.scaling, self.max_pixels)

    def _load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n  # deterministic replacement: the next sample
            if i in self._bad:
                continue
            try:
                item = self._load(i)
            except DataError as exc:
                if self.on_bad_file == "error":
                    raise
                self._bad.add(i)
                log.warning("skipping bad file (replaced by another sample): %s", exc)
                continue
            item["index"] = i
            return item
        raise DataError(f"none of the {n} files in this dataset could be read (first: {self.samples[0].path})")


class ClassificationDataset(_BaseDataset):
    """Items: `image` CHW float, `label` long (or float multi-hot if multilabel), `path`, `index`."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: TransformFn | None = None,
        channels: int = 3,
        on_bad_file: str = "skip",
        *,
        num_classes: int | None = None,
        multilabel: bool = False,
        scaling: ScalingConfig | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(samples, transform, channels, on_bad_file, scaling, max_pixels)
        if multilabel and num_classes is None:
            raise ConfigError("multi-label classification needs num_classes")
        self.num_classes, self.multilabel = num_classes, multilabel

    def _load(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        out = self.transform(self._image(s.path))
        if self.multilabel:
            target = torch.zeros(self.num_classes, dtype=torch.float32)
            target[list(s.label)] = 1.0
        else:
            target = torch.tensor(int(s.label), dtype=torch.long)
        return {"image": out["image"], "label": target, "path": str(s.path)}


class SegmentationDataset(_BaseDataset):
    """Items: `image` CHW float, `mask` HxW long (ignore_index where unlabelled), `path`, `index`."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: TransformFn | None = None,
        channels: int = 3,
        on_bad_file: str = "skip",
        *,
        lut: np.ndarray | None = None,
        ignore_index: int = 255,
        colours: list[tuple[int, int, int]] | None = None,
        scaling: ScalingConfig | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(samples, transform, channels, on_bad_file, scaling, max_pixels)
        self.lut, self.ignore_index, self.colours = lut, ignore_index, colours

    def _load(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        image = self._image(s.path)
        mask = read_mask(s.label, self.colours, self.max_pixels)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{s.label}: mask is {mask.shape[1]}x{mask.shape[0]} but image {s.path} is "
                f"{image.shape[1]}x{image.shape[0]}; masks must match their image size"
            )
        if self.lut is not None:
            if int(mask.max(initial=0)) >= len(self.lut):
                raise DataError(f"{s.label}: mask value {int(mask.max())} is outside the class mapping")
            mask = self.lut[mask]
        elif int(mask.max(initial=0)) > 255:
            raise DataError(f"{s.label}: mask value {int(mask.max())} > 255; give a class_mapping to merge classes")
        out = self.transform(image, mask.astype(np.uint8))
        return {"image": out["image"], "mask": out["mask"].long(), "path": str(s.path)}


class UnlabelledDataset(_BaseDataset):
    """Items: `image` CHW float, `path`, `index` (for self-supervised use and embedding)."""

    def __init__(
        self,
        samples: Sequence[Sample | Path | str],
        transform: TransformFn | None = None,
        channels: int = 3,
        on_bad_file: str = "skip",
        *,
        scaling: ScalingConfig | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        samples = [s if isinstance(s, Sample) else Sample(Path(s)) for s in samples]
        super().__init__(samples, transform, channels, on_bad_file, scaling, max_pixels)

    def _load(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        return {"image": self.transform(self._image(s.path))["image"], "path": str(s.path)}


def _label_counts(labels: Sequence[int | Sequence[int]], num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=np.float64)
    for lab in labels:
        for c in [lab] if isinstance(lab, (int, np.integer)) else lab:
            counts[int(c)] += 1
    return counts


def class_weights(labels: Sequence[int | Sequence[int]], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, normalised to mean 1 over present classes (absent -> 0)."""
    counts = _label_counts(labels, num_classes)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    present = counts > 0
    if present.any():
        w[present] *= present.sum() / w[present].sum()
    return torch.tensor(w, dtype=torch.float32)


def weighted_sampler(
    labels: Sequence[int | Sequence[int]], num_samples: int | None = None, seed: int = 0
) -> WeightedRandomSampler:
    """Sampler drawing every class about equally often (multi-label: by the rarest label of a sample)."""
    num_classes = (
        int(
            max(
                (max([lab] if isinstance(lab, (int, np.integer)) else lab, default=0) for lab in labels),
                default=0,
            )
        )
        + 1
    )
    counts = _label_counts(labels, num_classes)
    per_sample = [
        1.0 / counts[lab]
        if isinstance(lab, (int, np.integer))
        else max((1.0 / counts[c] for c in lab), default=1.0 / len(labels))
        for lab in labels
    ]
    gen = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.tensor(per_sample, dtype=torch.double),
        num_samples or len(labels),
        replacement=True,
        generator=gen,
    )


def build_datasets(
    cfg: DataConfig,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    run_dir: Path | None = None,
    patch_size: int = 16,
) -> tuple[DatasetSpec, dict[str, Dataset]]:
    """Spec + one Dataset per split from a DataConfig (train split augmented, others not).

    `mean`/`std` are the backbone's statistics; the automatic split goes to cfg.split_file, else to
    run_dir/splits.json when a run_dir is given.
    """
    split_file = cfg.split_file or (Path(run_dir) / "splits.json" if run_dir is not None else None)
    spec = load_dataset(
        cfg.root,
        cfg.task,
        cfg.layout,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.split_seed,
        split_file=split_file,
        csv_file=cfg.csv_file,
        class_map=cfg.class_map,
        group_by=cfg.group_by,
        volumes=cfg.volumes,
        slice_axis=cfg.scaling.slice_axis,
    )
    common = {
        "channels": cfg.channels or 3,
        "on_bad_file": cfg.on_bad_file,
        "scaling": cfg.scaling,
        "max_pixels": cfg.max_pixels,
    }
    lut = None
    if spec.task == "segment" and cfg.class_mapping is not None:
        lut = build_lut(load_class_mapping(cfg.class_mapping), cfg.ignore_index)
    out: dict[str, Dataset] = {}
    for name, samples in spec.splits.items():
        tf = transform_from_config(cfg, train=name in ("train", "all"), mean=mean, std=std, patch_size=patch_size)
        if spec.task == "classify":
            out[name] = ClassificationDataset(
                samples, tf, num_classes=spec.num_classes, multilabel=spec.multilabel, **common
            )
        elif spec.task == "segment":
            out[name] = SegmentationDataset(
                samples, tf, lut=lut, ignore_index=cfg.ignore_index, colours=spec.colours, **common
            )
        else:
            out[name] = UnlabelledDataset(samples, tf, **common)
    return spec, out
