"""`data stats`: suggest scaling and normalisation values from a seeded sample of a dataset's images.

Percentiles are taken on the stored values with nodata/NaN pixels left out (see `dinotune.data.intensity`),
so a GeoTIFF's fill value or a float raster's raw counts give usable `scaling.low/high`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.data.decode import decode_raw
from dinotune.data.formats import load_dataset
from dinotune.data.intensity import valid_mask
from dinotune.errors import DataError


def compute_stats(
    root: Path | str,
    *,
    max_images: int = 256,
    pixels_per_image: int = 4096,
    scaling: str = "auto",
    p_low: float = 1.0,
    p_high: float = 99.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-band percentiles (raw units) and mean/std (after scaling) from a seeded sample of images.

    `scaling="auto"` picks percentile scaling for >8-bit or multi-band data, fixed otherwise.
    """
    spec = load_dataset(root, auto_split=False)
    paths = sorted({s.path for samples in spec.splits.values() for s in samples}, key=str)
    rng = np.random.default_rng(seed)
    if len(paths) > max_images:
        paths = [paths[i] for i in sorted(rng.choice(len(paths), max_images, replace=False))]
    pixels, dtypes, skipped = _sample_pixels(paths, pixels_per_image, rng)
    if not pixels:
        raise DataError(f"{root}: no readable images to compute statistics from")
    px = np.concatenate(pixels)
    bands = px.shape[1]
    if scaling == "auto":
        scaling = "fixed" if set(dtypes) == {"uint8"} and bands in (1, 3) else "percentile"
    low, high = np.percentile(px, p_low, axis=0), np.percentile(px, p_high, axis=0)
    if scaling == "percentile":
        high = np.where(high > low, high, low + 1)
        scaled = np.clip((px - low) / (high - low), 0, 1)
    else:
        div = 255.0 if set(dtypes) == {"uint8"} else 65535.0 if all("int" in d for d in dtypes) else 1.0
        scaled = np.clip(px / div, 0, 1)
    return {
        "root": str(root),
        "n_images": len(pixels),
        "skipped": skipped,
        "bands": bands,
        "dtypes": dict(dtypes),
        "scaling": scaling,
        "low": low.round(4).tolist(),
        "high": high.round(4).tolist(),
        "mean": scaled.mean(axis=0).round(4).tolist(),
        "std": np.maximum(scaled.std(axis=0), 1e-4).round(4).tolist(),
    }


def _sample_pixels(
    paths: list[Path], pixels_per_image: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], Counter[str], list[str]]:
    """Up to `pixels_per_image` valid (not nodata) pixels of each readable image, its dtype, the skipped."""
    pixels, dtypes, skipped = [], Counter(), []
    for p in paths:
        try:
            a, info, _ = decode_raw(p)
        except DataError:
            skipped.append(str(p))
            continue
        if pixels and a.shape[2] != pixels[0].shape[1]:
            raise DataError(
                f"{p}: has {a.shape[2]} bands but earlier images have {pixels[0].shape[1]}; "
                "run `dinotune data check` and fix the mixed channel counts first"
            )
        valid = valid_mask(a, info)
        flat = a.reshape(-1, a.shape[2]) if valid is None else a[valid]
        if not len(flat):
            skipped.append(str(p))
            continue
        take = rng.choice(len(flat), min(pixels_per_image, len(flat)), replace=False)
        pixels.append(flat[take].astype(np.float64))
        dtypes[a.dtype.name] += 1
    return pixels, dtypes, skipped


def stats_yaml(stats: dict[str, Any]) -> str:
    """The `data:` snippet to paste into a config (comments explain where the numbers come from)."""
    lines = [
        f"# dinotune data stats {stats['root']}: {stats['n_images']} images sampled, "
        f"{stats['bands']} band(s), "
        f"dtypes {stats['dtypes']}",
        "data:",
        f"  channels: {stats['bands']}",
    ]
    if stats["scaling"] == "percentile":
        lines += [
            "  scaling:  # raw values at p1/p99 per band -> 0/1, clipped",
            "    mode: percentile",
            f"    low: {stats['low']}",
            f"    high: {stats['high']}",
        ]
    else:
        lines += ["  scaling:", "    mode: fixed"]
    lines += [
        "  # per-band mean/std after scaling; omit to use the backbone's statistics",
        f"  mean: {stats['mean']}",
        f"  std: {stats['std']}",
    ]
    return "\n".join(lines) + "\n"
