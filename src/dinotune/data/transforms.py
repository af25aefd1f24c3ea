"""Train/eval pipelines: resize to a patch multiple, augment (presets), normalise, HWC -> CHW tensor.

Images arrive as float32 HxWxC in [0, 1] (see decode.py), so every albumentations op below works for
1, 3 or N channels; colour-only ops (hue/saturation) are deliberately absent for that reason.
Normalisation is done here with numpy rather than albumentations' ToTensorV2 so nothing depends on
torchvision and N-band means work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import numpy as np

from dinotune.data.numpy_transforms import resolve_norm
from dinotune.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """Augmentation strengths of one preset; 0 / None disables an op."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # area range of the random crop (resize="crop")
    hflip: bool = True
    vflip: bool = False
    rot90: bool = False
    rotate: float = 0.0  # max degrees of free rotation
    scale_jitter: tuple[float, float] | None = None  # Affine scale range (used for pad/keep too)
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: tuple[int, int] | None = None  # RandomGamma limits in percent
    noise: tuple[float, float] | None = None  # GaussNoise std range (fraction of the value range)
    blur: float = 0.0  # probability of a 3x3 Gaussian blur


PRESETS: dict[str, Preset] = {
    "none": Preset(crop_scale=(1.0, 1.0), hflip=False),
    "default": Preset(crop_scale=(0.5, 1.0), hflip=True, brightness=0.2, contrast=0.2),
    # anatomy has a side: no flip by default, small rotation, mild intensity changes, almost no crop
    "medical": Preset(
        crop_scale=(0.85, 1.0),
        hflip=False,
        rotate=10.0,
        scale_jitter=(0.95, 1.05),
        brightness=0.1,
        contrast=0.1,
    ),
    # no canonical orientation from above: all flips and 90 degree turns, scale jitter, sensor noise
    "satellite": Preset(
        crop_scale=(0.5, 1.0), hflip=True, vflip=True, rot90=True, scale_jitter=(0.8, 1.2), noise=(0.01, 0.05)
    ),
    # defects can be small: keep most of the image, vary lighting and focus a little
    "industrial": Preset(
        crop_scale=(0.85, 1.0), hflip=True, vflip=True, rot90=True, brightness=0.2, contrast=0.2, blur=0.2
    ),
    "microscopy": Preset(
        crop_scale=(0.6, 1.0),
        hflip=True,
        vflip=True,
        rot90=True,
        brightness=0.2,
        contrast=0.2,
        gamma=(80, 120),
        noise=(0.01, 0.05),
    ),
}


class Transform:
    """Callable `(image HxWxC float32, mask HxW | None) -> {"image": CHW tensor, "mask": HxW long}`.

    A plain class (not a closure) so DataLoader workers can pickle it.
    """

    def __init__(
        self, pipeline: A.Compose, mean: np.ndarray, std: np.ndarray, keep_size: int | None, patch_size: int
    ) -> None:
        self.pipeline, self.mean, self.std = pipeline, mean, std
        self.keep_size, self.patch_size = keep_size, patch_size

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        if self.keep_size is not None:
            image, mask = _keep_resize(image, mask, self.keep_size, self.patch_size)
        out = self.pipeline(image=image, mask=mask) if mask is not None else self.pipeline(image=image)
        img = out["image"]
        if img.ndim == 2:
            img = img[:, :, None]
        img = (img.astype(np.float32, copy=False) - self.mean) / self.std
        import torch  # here, not at the top: the numpy twins (numpy_transforms) serve without torch

        result: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))}
        if mask is not None:
            result["mask"] = torch.from_numpy(np.ascontiguousarray(out["mask"]).astype(np.int64))
        return result


def _keep_resize(image: np.ndarray, mask: np.ndarray | None, size: int, patch: int):
    """Scale the longer side to `size`, then round both sides to patch multiples (aspect ~kept)."""
    h, w = image.shape[:2]
    f = size / max(h, w)
    th, tw = (max(patch, round(h * f / patch) * patch), max(patch, round(w * f / patch) * patch))
    if (th, tw) == (h, w):
        return image, mask
    # A.Resize rather than cv2.resize: it handles more than 4 channels and resizes masks with nearest
    op = A.Resize(th, tw, interpolation=3 if f < 1 else 1, p=1.0)  # INTER_AREA / INTER_LINEAR
    out = op(image=image, mask=mask) if mask is not None else op(image=image)
    return out["image"], out.get("mask")


def build_transform(
    *,
    train: bool,
    image_size: int = 224,
    patch_size: int = 16,
    resize: str = "crop",
    augment: str = "default",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int = 3,
    hflip: bool | None = None,
    ignore_index: int = 255,
) -> Transform:
    """Build the pipeline for one split. `mean`/`std` are the backbone's unless the config overrides."""
    if image_size % patch_size:
        raise ConfigError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
    if augment not in PRESETS:
        raise ConfigError(f"unknown augment preset {augment!r}; choose one of: {', '.join(PRESETS)}")
    if resize not in ("crop", "pad", "keep"):
        raise ConfigError(f"unknown resize mode {resize!r}; choose crop, pad or keep")
    p = PRESETS[augment] if train else PRESETS["none"]
    size = (image_size, image_size)
    ops: list[Any] = []
    if resize == "crop":
        if train and p.crop_scale != (1.0, 1.0):
            ops.append(A.RandomResizedCrop(size, scale=p.crop_scale, ratio=(3 / 4, 4 / 3)))
        else:
            ops += [A.SmallestMaxSize(max_size=image_size), A.CenterCrop(*size)]
    elif resize == "pad":
        ops += [
            A.LongestMaxSize(max_size=image_size),
            A.PadIfNeeded(image_size, image_size, border_mode=0, fill=0, fill_mask=ignore_index),
        ]
    ops += _augmentations(p, hflip if (train and hflip is not None) else p.hflip, ignore_index, resize)
    m, s = resolve_norm(mean, std, channels)
    return Transform(A.Compose(ops), m, s, image_size if resize == "keep" else None, patch_size)


def _augmentations(p: Preset, hflip: bool, ignore_index: int, resize: str) -> list[Any]:
    ops: list[Any] = []
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if p.vflip:
        ops.append(A.VerticalFlip(p=0.5))
    if p.rot90 and resize != "keep":  # keep: a 90 degree turn would change the output shape
        ops.append(A.RandomRotate90(p=0.5))
    if p.rotate or (p.scale_jitter and resize != "crop"):
        ops.append(
            A.Affine(
                rotate=(-p.rotate, p.rotate),
                scale=p.scale_jitter or (1.0, 1.0),
                border_mode=0,
                fill=0,
                fill_mask=ignore_index,
                p=0.5,
            )
        )
    if p.brightness or p.contrast:
        ops.append(A.RandomBrightnessContrast(brightness_limit=p.brightness, contrast_limit=p.contrast, p=0.5))
    if p.gamma:
        ops.append(A.RandomGamma(gamma_limit=p.gamma, p=0.3))
    if p.blur:
        ops.append(A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 1.0), p=p.blur))
    if p.noise:
        ops.append(A.GaussNoise(std_range=p.noise, p=0.3))
    return ops


def transform_from_config(
    cfg: Any,
    *,
    train: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    patch_size: int = 16,
) -> Transform:
    """Pipeline from a DataConfig; cfg.mean/std override the backbone statistics passed in; `patch_size` is the
    backbone's input multiple."""
    return build_transform(
        train=train,
        image_size=cfg.image_size,
        patch_size=patch_size,
        resize=cfg.resize,
        augment=cfg.augment,
        mean=cfg.mean if cfg.mean is not None else mean,
        std=cfg.std if cfg.std is not None else std,
        channels=cfg.channels or 3,
        hflip=cfg.hflip,
        ignore_index=cfg.ignore_index,
    )


class FullSize:
    """Eval transform: normalise only, keep the image's own size (a class, so workers can pickle it)."""

    def __init__(self, mean: Iterable[float], std: Iterable[float]) -> None:
        self.mean = np.asarray(list(mean), dtype=np.float32)
        self.std = np.asarray(list(std), dtype=np.float32)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        import torch

        image = image[:, :, None] if image.ndim == 2 else image
        img = (image.astype(np.float32) - self.mean) / self.std
        out: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))}
        if mask is not None:
            out["mask"] = torch.from_numpy(mask.astype(np.int64))
        return out
