"""DICOM files as images (optional extra `medical`: pydicom + pylibjpeg decoders).

A file is read in the order the standard prescribes: stored values -> modality LUT (RescaleSlope /
RescaleIntercept or a Modality LUT: Hounsfield units for CT) -> window (`scaling.window`):

* `auto` - the file's VOI LUT or WindowCenter/WindowWidth (first of each), else `none`;
* `none` - the full range the stored bits can hold (after the modality LUT) maps to [0, 1];
* a preset (`ct-lung`, `ct-soft-tissue`, `ct-bone`, `ct-brain`) or `[center, width]` - a linear window.

MONOCHROME1 is inverted (so bright is always dense), YBR colour is converted to RGB (pydicom does),
colour is scaled by BitsStored. Multi-frame files give their first frame (a note is logged once per
file), unless `data.volumes: slices` makes every frame a sample (`dinotune.data.volumes`); `frame=` in
`dicom_modality` / `read_dicom` reads another one. Only the decoded frame counts
against the decode budget.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.data.budget import DecodeCost, ImageInfo
from dinotune.data.intensity import Intensity, linear_window, resolve_window
from dinotune.errors import DataError

log = logging.getLogger(__name__)
INSTALL = "pip install 'dinotune[medical]'"
_noted: set[str] = set()


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise DataError(f"reading DICOM files needs pydicom: {INSTALL}") from None
    return pydicom


def read_header(path: Path | str) -> Any:
    """The dataset without its pixel data; a one-line DataError for a broken file."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read the DICOM header ({str(exc).splitlines()[0]}); the file is corrupt"
        ) from None


def dicom_cost(path: Path | str) -> DecodeCost:
    """Decode cost of one frame, from the header."""
    ds = read_header(path)
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: DICOM file holds no image (no Rows/Columns); remove it from the dataset")
    return DecodeCost(
        int(ds.Columns),
        int(ds.Rows),
        1,
        int(ds.get("SamplesPerPixel", 1)),
        max(1, int(ds.get("BitsAllocated", 16)) // 8),
    )


def dicom_info(path: Path | str) -> Any:
    """`ImageInfo` of a DICOM file from its header (dtype of the stored samples, frames as pages)."""
    ds = read_header(path)
    cost = dicom_cost(path)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{cost.itemsize}").name
    channels = 3 if cost.channels == 3 else 1
    return ImageInfo("dicom", cost.width, cost.height, channels, dtype, int(ds.get("NumberOfFrames", 1) or 1))


def _frame(path: Path | str, frame: int) -> tuple[np.ndarray, Any]:
    """Stored values of one frame (YBR already RGB) and the full header."""
    _pydicom()
    from pydicom.pixels import pixel_array

    ds = read_header(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise DataError(f"{path}: frame {frame} requested but the file has {frames} frame(s)")
    if frames > 1 and str(path) not in _noted:
        _noted.add(str(path))
        log.warning(
            "%s: multi-frame DICOM (%d frames); using frame %d only (data.volumes=slices: one sample per frame)",
            path,
            frames,
            frame,
        )
    try:
        arr = pixel_array(str(path), index=frame if frames > 1 else None)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ts = getattr(ds.file_meta, "TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
        hint = f"; compressed DICOM ({ts.name}) needs its decoder: {INSTALL}" if ts and ts.is_compressed else ""
        raise DataError(f"{path}: cannot decode the DICOM pixels ({reason}){hint}") from None
    return arr, ds


def dicom_modality(path: Path | str, frame: int = 0) -> np.ndarray:
    """Values after the modality LUT (Hounsfield units for CT), HxW float64 (HxWx3 for colour)."""
    from pydicom.pixels import apply_modality_lut

    arr, ds = _frame(path, frame)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return arr.astype(np.float64)
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def output_range(ds: Any) -> tuple[float, float]:
    """Range the modality values can take: stored bits through the modality LUT (as pydicom computes it)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    lo, hi = (
        (0.0, 2.0**bits - 1)
        if int(ds.get("PixelRepresentation", 0)) == 0
        else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    )
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def _file_window(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The file's own VOI LUT or window, normalised to [0, 1]; None when it has neither."""
    from pydicom.pixels import apply_voi_lut

    if ds.get("VOILUTSequence"):
        out = apply_voi_lut(values, ds, prefer_lut=True)
        top = float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        return np.clip(np.asarray(out, np.float64) / top, 0, 1).astype(np.float32)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        lo, hi = output_range(ds)
        out = np.asarray(apply_voi_lut(values, ds, prefer_lut=False), dtype=np.float64)
        return np.clip((out - lo) / (hi - lo), 0, 1).astype(np.float32)
    return None


def window_values(values: np.ndarray, ds: Any, window: Any = "auto") -> np.ndarray:
    """Modality values of a single-band frame -> float32 [0, 1] by `window` (see module docstring)."""
    choice = resolve_window(window)
    out = None
    if isinstance(choice, tuple):
        out = linear_window(values, *choice)
    elif choice == "auto":
        out = _file_window(values, ds)
    if out is None:
        lo, hi = output_range(ds)
        out = np.clip((values - lo) / (hi - lo), 0, 1).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return out


def read_dicom(path: Path | str, window: Any = "auto", frame: int = 0) -> np.ndarray:
    """One frame as float32 HxWxC in [0, 1]: modality LUT, window, MONOCHROME1 inversion, YBR -> RGB."""
    arr, ds = _frame(path, frame)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        bits = int(ds.get("BitsStored", 8))
        return np.clip(arr.astype(np.float32) / float(2**bits - 1), 0, 1)
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    return window_values(values, ds, window)[:, :, None]


def read_dicom_raw(path: Path | str, frame: int = 0) -> tuple[np.ndarray, Intensity]:
    """Stored values of one frame, HxWxC in their native dtype, and their BitsStored (for `data check`)."""
    arr, ds = _frame(path, frame)
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    info = Intensity(bits if bits < arr.dtype.itemsize * 8 else None)
    return (arr[:, :, None] if arr.ndim == 2 else arr), info
