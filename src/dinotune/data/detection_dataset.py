"""Images and their boxes as tensors: the transform that keeps boxes right, the Dataset, and the collate.

Every image leaves as a square `image_size` tensor, so a batch is one tensor:
- eval: the longest side resized to `image_size`, the image padded bottom/right, so a box in the
  transformed image maps back to original pixels by dividing by `scale`;
- train: the same resize times a random scale factor, then padded and cropped at a random place to the
  square, a horizontal flip and mild brightness/contrast. Boxes follow through albumentations'
  `BboxParams`; a box less than `min_visibility` visible after the crop is dropped.
Images are decoded by `data.decode` (16-bit, grey, EXIF orientation, the intensity rule), so every format
the other tasks read works here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch

from dinotune.data.box_records import BoxSample
from dinotune.data.config import DEFAULT_MAX_PIXELS, ScalingConfig
from dinotune.data.datasets import _BaseDataset
from dinotune.data.numpy_transforms import resolve_norm


class DetectionTransform:
    """Callable `(image HxWxC float32 in [0, 1], boxes (N, 4) xyxy, labels (N,))` -> dict with `image` CHW
    tensor, `boxes`, `labels` and `scale`. A plain class so DataLoader workers can pickle it."""

    def __init__(
        self,
        train: bool,
        image_size: int,
        mean: np.ndarray,
        std: np.ndarray,
        scale_range: tuple[float, float] = (0.75, 1.25),
        min_visibility: float = 0.3,
        seed: int | None = None,
    ) -> None:
        self.train, self.image_size, self.mean, self.std = train, image_size, mean, std
        self.scale_range, self.seed = scale_range, seed
        self.rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None
        self._seeded = False  # set_random_seed was called: the caller seeds every item, workers do not reseed
        bbox = A.BboxParams(
            format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility if train else 0.0, clip=True
        )
        size = image_size
        ops: list[Any] = (
            [
                A.PadIfNeeded(size, size, position="random", border_mode=0, fill=0),
                A.RandomCrop(size, size),
                A.HorizontalFlip(p=0.5),
                A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            ]
            if train
            else [A.PadIfNeeded(size, size, position="top_left", border_mode=0, fill=0)]
        )
        self.pipeline = A.Compose(ops, bbox_params=bbox, seed=seed)

    def _reseed_in_worker(self) -> None:
        """DataLoader workers get copies of one random state: reseed each from its worker seed (new every
        epoch, derived from the run's seed), or all workers would augment alike, epoch after epoch."""
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self.rng = np.random.default_rng(info.seed)
            self.pipeline.set_random_seed(info.seed % 2**32)

    def set_random_seed(self, seed: int) -> None:
        """Seed the scale jitter and the albumentations pipeline together. The training loader calls this before
        each item with a (seed, epoch, index) seed, so a resumed run draws the augmentations the uninterrupted one
        drew; from the first call on, DataLoader workers no longer reseed from their worker seed."""
        self.rng = np.random.default_rng(seed)
        self.pipeline.set_random_seed(seed)
        self._seeded = True

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        if self.train and not self._seeded:
            self._reseed_in_worker()
        h, w = image.shape[:2]
        scale = self.image_size / max(h, w)
        if self.train:
            scale *= float(self.rng.uniform(*self.scale_range))
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
        if (th, tw) != (h, w):
            image = A.Resize(th, tw, interpolation=3 if scale < 1 else 1, p=1.0)(image=image)["image"]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32(scale)
        boxes = np.clip(boxes, 0, [tw, th, tw, th]).astype(np.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out = self.pipeline(image=image, bboxes=boxes[keep], labels=np.asarray(labels, np.int64)[keep])
        img = out["image"]
        img = img[:, :, None] if img.ndim == 2 else img
        img = (img.astype(np.float32, copy=False) - self.mean) / self.std
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1)),
            "scale": scale,
        }


def detection_transform(
    train: bool,
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int = 3,
    seed: int | None = None,
    scale_range: tuple[float, float] = (0.75, 1.25),
    min_visibility: float = 0.3,
) -> DetectionTransform:
    """The train or eval pipeline; `mean`/`std` are the backbone's (or the config's), one per channel."""
    m, s = resolve_norm(mean, std, channels)
    return DetectionTransform(train, image_size, m, s, scale_range, min_visibility, seed)


class DetectionDataset(_BaseDataset):
    """Items: `image` CHW float, `boxes` (N, 4) xyxy pixels of the transformed image, `labels` (N,), `scale`
    (transformed / original) and `index`. Unreadable files are skipped or raise as in the other datasets."""

    def __init__(
        self,
        samples: Sequence[BoxSample],
        transform: DetectionTransform,
        channels: int = 3,
        on_bad_file: str = "skip",
        *,
        scaling: ScalingConfig | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(samples, transform, channels, on_bad_file, scaling, max_pixels)

    def _load(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        return self.transform(self._image(s.path), s.boxes, s.labels)


def collate_detection(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images (all the same square size); boxes and labels stay lists, one tensor per image."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "boxes": [b["boxes"] for b in batch],
        "labels": [b["labels"] for b in batch],
        "scale": torch.tensor([float(b["scale"]) for b in batch], dtype=torch.float32),
        "index": torch.tensor([int(b["index"]) for b in batch], dtype=torch.long),
    }
