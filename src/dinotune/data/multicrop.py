"""Multi-crop views for self-supervised training: 2 global crops + N local crops per image, and the
block masks iBOT applies to the global crops.

Follows DINO's recipe (random-resized crops, flips, colour jitter, grayscale, Gaussian blur,
solarisation; the two global crops get different blur/solarise strengths) with domain-aware options:
- `colour_bands`: how many leading channels are colour (RGB). Colour jitter, grayscale and solarise act
  on those only; other bands (NIR, SAR, elevation...) only get geometric ops and blur. For 1-channel
  images only brightness/contrast jitter applies (no saturation/hue, no grayscale).
- `vflip` / `rot90` for imagery without a canonical orientation (satellite, microscopy).
DINOv3 ViTs use RoPE, so local crops of another size need no position-embedding interpolation.

Randomness is a pure function of (seed, epoch, image index): `EpochSampler` encodes the epoch into the
index it yields, and every view is drawn from a generator seeded with it. Resumed runs, any number of
workers and every DDP rank therefore see exactly the augmentations an uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from pydantic import Field, model_validator
from torch.utils.data import Dataset

from dinotune.config import StrictModel
from dinotune.data.decode import read_image
from dinotune.errors import DataError

log = logging.getLogger(__name__)


class MultiCropConfig(StrictModel):
    global_size: int = Field(224, gt=0, description="Side of the 2 global crops (a multiple of the patch size).")
    local_size: int = Field(96, gt=0, description="Side of the local crops (a multiple of the patch size).")
    global_scale: tuple[float, float] = Field((0.4, 1.0), description="Area fraction range of global crops.")
    local_scale: tuple[float, float] = Field((0.05, 0.4), description="Area fraction range of local crops.")
    n_local: int = Field(8, ge=0, description="Local crops per image (0: global crops only).")
    hflip: bool = True
    vflip: bool = Field(False, description="Also flip vertically (no canonical 'up', e.g. satellite).")
    rot90: bool = Field(False, description="Random 90-degree turns (no canonical orientation).")
    colour_jitter_p: float = Field(0.8, ge=0, le=1, description="Probability of colour jitter per view.")
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0, description="Only for 3 colour bands.")
    hue: float = Field(0.1, ge=0, le=0.5, description="Only for 3 colour bands.")
    grayscale_p: float = Field(0.2, ge=0, le=1, description="Probability of grayscale (3 colour bands only).")
    blur_p: tuple[float, float, float] = Field(
        (1.0, 0.1, 0.5), description="Gaussian blur probability: global crop 1, global crop 2, local crops."
    )
    solarize_p: float = Field(0.2, ge=0, le=1, description="Solarisation probability of global crop 2.")
    colour_bands: int | None = Field(
        None, ge=0, description="Leading colour channels (None: 3 if the image has >= 3 channels, else 1)."
    )

    @model_validator(mode="after")
    def _check(self) -> MultiCropConfig:
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        return self

    def check_patch(self, patch_size: int) -> None:
        for name in ("global_size", "local_size"):
            value = getattr(self, name)
            if value % patch_size:
                from dinotune.errors import ConfigError

                lo = max(patch_size, value // patch_size * patch_size)
                raise ConfigError(f"crops.{name}={value} is not a multiple of the patch size {patch_size}; use {lo}.")


def block_mask(
    grid: tuple[int, int],
    n_masked: int,
    rng: np.random.Generator,
    min_block: int = 4,
    max_aspect: float = 3.0,
    max_tries: int = 10,
) -> np.ndarray:
    """(H, W) bool mask with about `n_masked` patches, as random rectangles (BEiT/iBOT block masking).

    Blocks of random area (>= `min_block` patches) and aspect ratio are added until the target is met;
    if blocks cannot place more, random single patches fill the remainder, so the count is exact.
    """
    height, width = grid
    mask = np.zeros(grid, dtype=bool)
    n_masked = min(n_masked, height * width)
    log_aspect = (math.log(1 / max_aspect), math.log(max_aspect))
    tries = 0
    while mask.sum() < n_masked and tries < max_tries * 10:
        remaining = n_masked - int(mask.sum())
        area = rng.uniform(min(min_block, remaining), max(min(min_block, remaining), remaining))
        aspect = math.exp(rng.uniform(*log_aspect))
        h = max(1, min(height, round(math.sqrt(area * aspect))))
        w = max(1, min(width, round(math.sqrt(area / aspect))))
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        block = mask[top : top + h, left : left + w]
        new = int((~block).sum())
        if 0 < new <= remaining:
            block[...] = True
        tries += 1
    missing = n_masked - int(mask.sum())
    if missing > 0:
        free = np.flatnonzero(~mask.ravel())
        mask.ravel()[rng.choice(free, size=missing, replace=False)] = True
    return mask


class MultiCrop:
    """Callable image (H, W, C float [0, 1]) + generator -> global (2, C, G, G) and local (N, C, L, L)."""

    def __init__(self, cfg: MultiCropConfig, channels: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.cfg, self.channels = cfg, channels
        self.colour_bands = cfg.colour_bands if cfg.colour_bands is not None else (3 if channels >= 3 else 1)
        if self.colour_bands > channels:
            raise DataError(f"crops.colour_bands={self.colour_bands} exceeds the {channels} image channels.")
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        g1, g2, loc = cfg.blur_p
        self.views = [
            (self._geometry(cfg.global_size, cfg.global_scale), self._colour(g1, 0.0)),
            (self._geometry(cfg.global_size, cfg.global_scale), self._colour(g2, cfg.solarize_p)),
        ]
        self.local = (self._geometry(cfg.local_size, cfg.local_scale), self._colour(loc, 0.0))

    def _geometry(self, size: int, scale: tuple[float, float]) -> A.Compose:
        ops: list[Any] = [A.RandomResizedCrop(size=(size, size), scale=scale, ratio=(3 / 4, 4 / 3), p=1.0)]
        if self.cfg.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if self.cfg.vflip:
            ops.append(A.VerticalFlip(p=0.5))
        if self.cfg.rot90:
            ops.append(A.RandomRotate90(p=0.5))
        return A.Compose(ops)

    def _colour(self, blur_p: float, solarize_p: float) -> tuple[A.Compose | None, A.Compose]:
        """(colour ops on the colour bands or None, ops on all bands)."""
        cfg, ops = self.cfg, []
        if self.colour_bands == 3:
            ops.append(
                A.ColorJitter(
                    brightness=cfg.brightness,
                    contrast=cfg.contrast,
                    saturation=cfg.saturation,
                    hue=cfg.hue,
                    p=cfg.colour_jitter_p,
                )
            )
            ops.append(A.ToGray(num_output_channels=3, p=cfg.grayscale_p))
        elif self.colour_bands >= 1:
            ops.append(
                A.RandomBrightnessContrast(
                    brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=cfg.colour_jitter_p
                )
            )
        if solarize_p > 0 and self.colour_bands:
            ops.append(A.Solarize(threshold_range=(0.5, 0.5), p=solarize_p))
        colour = A.Compose(ops) if ops and self.colour_bands else None
        return colour, A.Compose([A.GaussianBlur(sigma_limit=(0.1, 2.0), blur_limit=0, p=blur_p)])

    def _view(
        self,
        image: np.ndarray,
        geometry: A.Compose,
        colour: tuple[A.Compose | None, A.Compose],
        rng: np.random.Generator,
    ) -> torch.Tensor:
        colour_ops, all_ops = colour
        for compose in (geometry, colour_ops, all_ops):
            if compose is not None:
                compose.set_random_seed(int(rng.integers(2**31)))
        out = geometry(image=image)["image"]
        if out.ndim == 2:
            out = out[:, :, None]
        if colour_ops is not None:
            bands = np.ascontiguousarray(out[:, :, : self.colour_bands])
            jittered = colour_ops(image=bands)["image"]
            out = np.concatenate([jittered.reshape(*bands.shape), out[:, :, self.colour_bands :]], axis=2)
        out = all_ops(image=np.ascontiguousarray(out))["image"].reshape(out.shape)
        out = (np.clip(out, 0.0, 1.0).astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        glob = torch.stack([self._view(image, g, c, rng) for g, c in self.views])
        size = self.cfg.local_size
        local = [self._view(image, *self.local, rng) for _ in range(self.cfg.n_local)]
        local_t = torch.stack(local) if local else torch.zeros(0, self.channels, size, size)
        return {"global": glob, "local": local_t}


class MultiCropDataset(Dataset):
    """Unlabelled images -> multi-crop views + iBOT masks of the global crops.

    Items: `global` (2, C, G, G), `local` (N, C, L, L), `masks` (2, (G/p)^2) bool. Each global crop is
    masked with probability `mask_probability`, at a ratio drawn uniformly from `mask_ratio`. Unreadable
    files are skipped (logged by the decoder's error) and replaced by the next image.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        crops: MultiCrop,
        patch_size: int,
        seed: int = 0,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        channels: int = 3,
        on_bad_file: str = "skip",
    ) -> None:
        self.paths, self.crops, self.seed = list(paths), crops, seed
        self.grid = crops.cfg.global_size // patch_size
        self.mask_ratio, self.mask_probability = mask_ratio, mask_probability
        self.channels, self.on_bad_file = channels, on_bad_file

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> np.ndarray:
        n = len(self.paths)
        for step in range(n):
            try:
                return read_image(self.paths[(index + step) % n], self.channels)
            except DataError as err:
                if self.on_bad_file == "error":
                    raise
                log.warning("skipping unreadable image (replaced by the next one): %s", err)
        raise DataError("no readable image in the pretraining data (every file failed to decode).")

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(int(key), len(self.paths))
        rng = np.random.default_rng([self.seed, epoch, index])
        item = self.crops(self._read(index), rng)
        n_patches = self.grid * self.grid
        masks = []
        for _ in range(2):
            if rng.random() < self.mask_probability:
                n = round(rng.uniform(*self.mask_ratio) * n_patches)
                masks.append(block_mask((self.grid, self.grid), n, rng).ravel())
            else:
                masks.append(np.zeros(n_patches, dtype=bool))
        item["masks"] = torch.from_numpy(np.stack(masks))
        return item
