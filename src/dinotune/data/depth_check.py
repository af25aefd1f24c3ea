"""`data check` on a depth layout (images/ + depth/): one line per problem, naming the file and the fix.

Problems found: an image without a depth map or the reverse, a depth map whose size differs from its
image, a map with no valid pixel (all 0 / NaN / inf or outside min..max depth), a depth file of the wrong
kind (several channels, or an 8-bit PNG: millimetres need 16 bits), and files that do not decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dinotune.data.check import CheckReport, Issue
from dinotune.data.decode import decode_raw
from dinotune.data.depth import depth_pairs, valid_depth
from dinotune.errors import DataError


def _raw_depth(path: Path) -> np.ndarray:
    """The stored values as they are (no scale), or DataError."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            return np.asarray(tifffile.imread(path))
        except Exception as err:  # tifffile raises many types for broken files
            raise DataError(f"{path}: not a readable TIFF ({str(err).splitlines()[0][:100]})") from None
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except Exception as err:  # PIL raises many types for broken files
        raise DataError(f"{path}: not a readable PNG ({str(err).splitlines()[0][:100]})") from None


def _depth_issues(depth: Path, image: Path, scale: float, min_depth: float, max_depth: float, rel) -> list[Issue]:
    try:
        raw = np.squeeze(_raw_depth(depth))
        shape = decode_raw(image)[0].shape
    except DataError as err:
        return [Issue("error", "unreadable", f"{err}; re-save the file", [rel(depth)])]
    if raw.ndim != 2:
        return [
            Issue(
                "error",
                "depth_channels",
                f"depth map has shape {raw.shape}, not one channel: {rel(depth)}; "
                "save depth alone as a 16-bit PNG or float32 TIFF",
                [rel(depth)],
            )
        ]
    issues = []
    if raw.dtype == np.uint8 or raw.dtype == bool:
        issues.append(
            Issue(
                "error",
                "depth_dtype",
                f"depth map is {raw.dtype} (at most 255 steps): {rel(depth)}; "
                "save depth as a 16-bit PNG (e.g. millimetres) or a float32 TIFF",
                [rel(depth)],
            )
        )
    if raw.shape != shape[:2]:
        issues.append(
            Issue(
                "error",
                "depth_size",
                f"depth map is {raw.shape[1]}x{raw.shape[0]} but its image is "
                f"{shape[1]}x{shape[0]}: {rel(depth)}; save depth at the image's size",
                [rel(depth)],
            )
        )
    metres = raw.astype(np.float64) * (1.0 if raw.dtype.kind == "f" else scale)
    if not valid_depth(metres, min_depth, max_depth).any():
        finite = metres[np.isfinite(metres)]
        seen = f"values {finite.min():g}..{finite.max():g} m" if finite.size else "no finite value"
        issues.append(
            Issue(
                "error",
                "depth_all_invalid",
                f"no valid depth ({seen}; valid: {min_depth:g} < d <= "
                f"{max_depth:g} m): {rel(depth)}; check data.depth_scale / data.max_depth or drop the "
                "pair",
                [rel(depth)],
            )
        )
    return issues


def check_depth(
    root: Path | str, *, depth_scale: float = 0.001, min_depth: float = 0.001, max_depth: float = 10.0
) -> CheckReport:
    """Inspect every pair under `root` (never writes anything)."""
    root = Path(root)
    rep = CheckReport(str(root), "depth", "depth")

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)

    for split, (pairs, lonely_images, lonely_depths) in depth_pairs(root).items():
        rep.split_sizes[split] = len(pairs)
        rep.n_images += len(pairs) + len(lonely_images)
        for image in lonely_images:
            rep.issues.append(
                Issue(
                    "error",
                    "image_without_depth",
                    f"image has no depth map: {rel(image)}; add "
                    f"{image.stem}.png (or .tif) under depth/ or remove the image",
                    [rel(image)],
                )
            )
        for depth in lonely_depths:
            rep.issues.append(
                Issue(
                    "error",
                    "depth_without_image",
                    f"depth map has no image: {rel(depth)}; add the image of the same name under images/ or remove it",
                    [rel(depth)],
                )
            )
        for image, depth in pairs:
            rep.issues += _depth_issues(depth, image, depth_scale, min_depth, max_depth, rel)
    return rep
