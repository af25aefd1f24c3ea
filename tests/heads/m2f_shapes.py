"""Generated data for the Mask2Former tests: coloured shapes on noisy backgrounds, and a tiny head config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinotune.heads.mask2former import Mask2FormerConfig

#: the head's own (fine) classes and the user's coarser ones
HEAD_CLASSES = ["background", "red_square", "blue_square", "green_disk"]
USER_CLASSES = ["background", "square", "disk"]
AGGREGATE = {"background": ["background"], "square": ["red_square", "blue_square"], "disk": ["green_disk"]}
COLOURS = {1: (0.9, 0.15, 0.1), 2: (0.1, 0.2, 0.9), 3: (0.1, 0.85, 0.2)}
TO_USER = np.array([0, 1, 1, 2])


def tiny_config(**overrides) -> Mask2FormerConfig:
    """hidden 32 and every hard-coded official size shrunk: a head that trains in seconds on 2 CPU cores."""
    values = dict(hidden_dim=32, num_queries=8, enc_layers=1, dec_layers=3, ffn_dim=64, heads=4, adapter_heads=4,
                  adapter_inplanes=16, adapter_drop_path=0.0)  # fmt: skip
    return Mask2FormerConfig(**(values | overrides))


def shapes(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, size, size, 3) in [0, 1] and their fine masks (n, size, size): 1-3 shapes each."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.4, 0.08, (n, size, size, 3)).clip(0, 1)
    masks = np.zeros((n, size, size), dtype=np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(1, 4))
            r = int(rng.integers(size // 10, size // 5))
            cy, cx = rng.integers(r, size - r, 2)
            area = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r if k == 3 else (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            images[i][area] = COLOURS[k]
            masks[i][area] = k
    return images.astype(np.float32), masks


def as_tensors(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy((images - 0.5) / 0.25).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks)


def write_dataset(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """The user's data on disk (images/, masks/ per split, classes.yaml) with the coarse classes."""
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        images, masks = shapes(n, seed=s)
        for sub in ("images", "masks"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((images[i] * 255).astype(np.uint8)).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(TO_USER[masks[i]].astype(np.uint8)).save(root / "masks" / split / f"{i:03d}.png")
    lines = ["classes:"] + [
        f"  - {{name: {c}, color: [{40 * i}, {80 * i}, {120 * i}]}}" for i, c in enumerate(USER_CLASSES)
    ]
    (root / "classes.yaml").write_text("\n".join(lines) + "\n")
    return root
