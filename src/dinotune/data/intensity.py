"""The one rule that turns stored sample values into floats in [0, 1], for every format.

In order, the first that applies:

1. `scaling.mode: percentile` - per-band raw `low`/`high` (from `dinotune data stats`) map to 0/1, clipped;
   `scaling.mode: per_image` - each image's own per-channel `percentiles` (default 1 / 99.8) map to 0/1,
   clipped (low-dynamic-range microscopy and fluorescence, as microscopy tools normalise).
2. An explicit window (`scaling.window: <preset>` or `[center, width]`) on single-band data - the DICOM
   linear window (PS3.3 C.11.2.1.2) on the raw values (Hounsfield units for CT DICOM).
3. uint8 - divided by 255 (bit-identical to the earlier rule).
4. `scaling.divisor` set - divided by it (the user knows the range).
5. Unsigned integers - divided by their real maximum: the file's declared maximum (TIFF SMaxSampleValue /
   MaxSampleValue) or 2^bits - 1 for its real bit depth (DICOM BitsStored, TIFF BitsPerSample); 16-bit
   files that declare nothing are divided by 65535 and `data check` warns when they use a small part of it.
6. Signed integers - the type's full signed range maps to [0, 1], so -1024 HU, 0 and 1000 stay distinct.
7. Floats already in [0, 1] are kept; other float rasters (radiance, raw counts) are stretched per image
   between their min and max with a one-time warning - use `data stats` for dataset-wide scaling.

A TIFF nodata value (GDAL_NODATA) and NaN are masked: left out of the statistics and set to 0.
DICOM files are windowed in `dinotune.data.dicom` (VOI LUT / WindowCenter / presets) with the same window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinotune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Named CT windows (center, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "ct-lung": (-600.0, 1500.0),
    "ct-soft-tissue": (40.0, 400.0),
    "ct-bone": (400.0, 1800.0),
    "ct-brain": (40.0, 80.0),
}
_warned: set[str] = set()


@dataclass(frozen=True)
class Intensity:
    """What a file declares about its sample values (None: it declares nothing)."""

    bits: int | None = None  # real bit depth, when below the container's
    max_value: float | None = None  # declared maximum sample value
    nodata: float | None = None  # value marking missing pixels


def resolve_window(window: str | list[float] | tuple[float, float] | None) -> tuple[float, float] | str | None:
    """ "auto" (also for None, the config default), None for `none`, a preset or [center, width] as a
    (center, width) tuple; ConfigError for anything else."""
    if window is None or window == "auto":
        return "auto"
    if window == "none":
        return None
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ConfigError(
                f"data.scaling.window={window!r} is unknown; use auto, none, [center, width] or one of "
                + ", ".join(WINDOW_PRESETS)
            )
        return WINDOW_PRESETS[window]
    if len(window) != 2 or float(window[1]) < 1:
        raise ConfigError(f"data.scaling.window={list(window)} must be [center, width] with width >= 1")
    return float(window[0]), float(window[1])


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR window normalised to [0, 1]: same as pydicom's `apply_voi_lut` divided by its range."""
    x = np.asarray(x, dtype=np.float64)
    out = (x - (center - 0.5)) / (width - 1.0) + 0.5 if width > 1 else (x > center - 0.5).astype(np.float64)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def valid_mask(arr: np.ndarray, info: Intensity) -> np.ndarray | None:
    """HxW True where a pixel holds data (not nodata, not NaN); None when every pixel does."""
    bad = np.zeros(arr.shape[:2], dtype=bool)
    if np.issubdtype(arr.dtype, np.floating):
        bad |= np.isnan(arr).any(axis=2)
    if info.nodata is not None:
        bad |= (arr == np.asarray(info.nodata, dtype=arr.dtype)).any(axis=2)
    return ~bad if bad.any() else None


def unsigned_divisor(arr: np.ndarray, info: Intensity) -> float:
    """Divisor for unsigned integers: the declared maximum, else the real bit depth, else 65535."""
    if info.max_value:
        return float(info.max_value)
    container = arr.dtype.itemsize * 8
    if info.bits and info.bits < container:
        return float(2**info.bits - 1)
    return 65535.0


def _float_stretch(arr: np.ndarray, valid: np.ndarray | None, path: Path | str) -> np.ndarray:
    values = arr if valid is None else arr[valid]
    values = values[np.isfinite(values)]
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        return arr.astype(np.float32)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    _warn_once(
        "float",
        f"{path}: float raster with values {lo:g}..{hi:g} (outside [0, 1]) is stretched per image; "
        "run `dinotune data stats` and paste its scaling for dataset-wide values",
    )
    return ((arr.astype(np.float32) - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def to_unit(arr: np.ndarray, info: Intensity | None = None, scaling=None, path: Path | str = "") -> np.ndarray:
    """Map HxWxC stored values to float32 in [0, 1] by the module's rule; masked pixels become 0."""
    info = info or Intensity()
    valid = valid_mask(arr, info)
    window = resolve_window(getattr(scaling, "window", None))
    if getattr(scaling, "mode", "fixed") == "percentile":  # scaling: a ScalingConfig, or None (the defaults)
        low, high = np.asarray(scaling.low, np.float32), np.asarray(scaling.high, np.float32)
        if low.size not in (1, arr.shape[2]):
            raise DataError(f"{path}: has {arr.shape[2]} bands but scaling.low/high have {low.size} values")
        out = (arr.astype(np.float32) - low) / (high - low)
    elif getattr(scaling, "mode", "fixed") == "per_image":
        out = _per_image(arr, valid, scaling.percentiles)
    elif isinstance(window, tuple) and arr.shape[2] == 1:
        out = linear_window(arr, *window)
    elif arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif getattr(scaling, "divisor", None):
        out = arr.astype(np.float32) / float(scaling.divisor)
    elif np.issubdtype(arr.dtype, np.unsignedinteger):
        if arr.size and (note := range_note(float(arr.max()), arr.dtype.name, info)):
            _warn_once("bits", f"{path}: {note} (set data.scaling.divisor, e.g. 4095, or use percentile scaling)")
        out = arr.astype(np.float32) / unsigned_divisor(arr, info)
    elif np.issubdtype(arr.dtype, np.signedinteger):
        bits = info.bits or arr.dtype.itemsize * 8
        lo = -(2.0 ** (bits - 1))
        out = ((arr.astype(np.float64) - lo) / (2.0**bits - 1)).astype(np.float32)
    else:
        out = _float_stretch(arr, valid, path)
    out = np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    if valid is not None:
        out[~valid] = 0.0
    return np.clip(out, 0.0, 1.0, out=out)


def _per_image(arr: np.ndarray, valid: np.ndarray | None, percentiles: tuple[float, float]) -> np.ndarray:
    """Each channel's own low/high percentiles (over valid pixels) map to 0/1: what microscopy tools do
    for low-dynamic-range images, whose values may sit anywhere in their type's range."""
    data = arr.astype(np.float32)
    out = np.zeros_like(data)
    for c in range(data.shape[2]):
        values = data[..., c] if valid is None else data[..., c][valid]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, percentiles)
        out[..., c] = (data[..., c] - lo) / (hi - lo if hi > lo else 1.0)
    return out


def range_note(max_value: float, dtype: str, info: Intensity) -> str | None:
    """Why a 16-bit file that declares no bit depth may be scaled badly (for `data check`), or None."""
    if dtype != "uint16" or info.bits or info.max_value or max_value <= 0:
        return None
    used = max_value / 65535.0
    if used > 0.25:
        return None
    bits = max(1, int(max_value).bit_length())
    share = f"{used:.1%}" if used < 0.01 else f"{used:.0%}"  # never a misleading "0%"
    hint = " (low-light microscopy: data.scaling.mode=per_image)" if used < 0.05 else ""
    return f"{bits}-bit data in 16-bit files: {share} of the range used; run `dinotune data stats`{hint}"
