"""A synthetic scene generator with known geometry, for the depth tests: a floor plane seen by a pinhole
camera (depth = f * height / (row - horizon) below the horizon), a back wall above it, and boxes standing
on the floor in front of it. Colours fade into fog with distance (atmospheric perspective) and the floor
carries a perspective checkerboard, so depth is learnable from the image. Depth maps are written as 16-bit
PNG in millimetres (data.depth_scale 0.001), with a hole of invalid (0) pixels in some of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FOG = np.array([0.75, 0.8, 0.85], np.float32)


def render_scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float32 HxWx3 in [0, 1], depth float32 HxW in metres) of one random scene."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    horizon = rng.uniform(0.25, 0.55) * size
    focal, height, wall = size * 0.9, rng.uniform(1.0, 1.8), rng.uniform(6.0, 9.0)
    floor = focal * height / np.maximum(rows - horizon, 1e-3)
    depth = np.where(rows > horizon, np.minimum(floor, wall), wall).astype(np.float32)
    # the floor's ground coordinates give a checkerboard in perspective
    ground_x = (cols - size / 2) * depth / focal
    checker = ((np.floor(depth * 1.5) + np.floor(ground_x * 1.5)) % 2).astype(np.float32)
    albedo = np.where((rows > horizon)[..., None], 0.35 + 0.3 * checker[..., None], np.array([0.55, 0.45, 0.4]))
    albedo = albedo * np.ones(3, np.float32)
    for _ in range(rng.integers(1, 4)):  # boxes standing on the floor, nearer than what is behind them
        d = rng.uniform(1.2, 5.0)
        base = horizon + focal * height / d  # the floor row at depth d
        half_w, box_h = rng.uniform(0.3, 0.8) * focal / d, rng.uniform(0.4, 1.2) * focal / d
        x0 = rng.uniform(0, size)
        inside = (np.abs(cols - x0) < half_w) & (rows <= base) & (rows > base - box_h) & (depth > d)
        depth[inside] = d
        albedo[inside] = rng.uniform(0.1, 0.9, 3)
    shade = 1.0 - 0.25 * (rows / size)[..., None]  # light from above
    fade = np.exp(-depth / 4.0)[..., None]
    image = albedo * shade * fade + FOG * (1 - fade)
    return np.clip(image, 0, 1).astype(np.float32), depth


def write_scenes(root: Path, counts: dict[str, int], size: int = 64, seed: int = 0, holes: bool = True) -> Path:
    """images/<split>/scene_i.png + depth/<split>/scene_i.png (uint16 millimetres, 0 = no measurement)."""
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "depth" / split).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            image, depth = render_scene(rng, size)
            stored = np.round(depth * 1000).astype(np.uint16)
            if holes and index % 3 == 0:  # a sensor hole: no measurement there
                y, x = rng.integers(0, size - 8, 2)
                stored[y : y + 8, x : x + 8] = 0
            Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "images" / split / f"scene_{index}.png")
            Image.fromarray(stored).save(root / "depth" / split / f"scene_{index}.png")
            index += 1
    return root
