"""NIfTI volumes (`.nii`, `.nii.gz`; optional extra `medical`: nibabel) read as 2-D slices.

A volume gives one slice per file: by default the middle slice along the last spatial axis (axis 2,
usually axial), or along `data.scaling.slice_axis`; `read_nifti(path, axis, index)` reads any other.
4-D series give their first volume. Axes are the array's as stored (no reorientation). Values are the
stored values with the header's scl_slope/scl_inter applied by nibabel, then the one intensity rule
(`dinotune.data.intensity`); only the decoded slice counts against the decode budget, and nibabel's
array proxy reads only that slice from an uncompressed `.nii`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dinotune.data.budget import DecodeCost, ImageInfo
from dinotune.errors import DataError

INSTALL = "pip install 'dinotune[medical]'"
NIFTI1_MAGIC = (b"n+1\x00", b"ni1\x00")
NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"


def is_nifti_path(path: Path) -> bool:
    """True for the file names NIfTI volumes use."""
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _magic(head: bytes) -> bool:
    return head[344:348] in NIFTI1_MAGIC or head[4:12] == NIFTI2_MAGIC


def _gunzipped_head(path: Path) -> bytes:
    import gzip

    try:
        with gzip.open(path, "rb") as handle:
            return handle.read(348)
    except (OSError, EOFError):
        return b""


def is_nifti(path: Path, head: bytes) -> bool:
    """A NIfTI-1/2 header, plain or gzipped (by content, so an upload saved without its name is one too)."""
    if head[:2] == b"\x1f\x8b":
        return path.name.lower().endswith(".nii.gz") or _magic(_gunzipped_head(path))
    return _magic(head)


def _load(path: Path | str) -> Any:
    try:
        import nibabel
    except ImportError:
        raise DataError(f"reading NIfTI files needs nibabel: {INSTALL}") from None
    try:
        img = nibabel.load(str(path)) if is_nifti_path(Path(path)) else _load_unnamed(nibabel, Path(path))
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read the NIfTI header ({str(exc).splitlines()[0]}); the file is corrupt"
        ) from None
    if len(img.shape) < 2:
        raise DataError(f"{path}: NIfTI image of shape {img.shape} is not 2-D or 3-D")
    return img


def _load_unnamed(nibabel: Any, path: Path) -> Any:
    """A volume whose file name says nothing (an upload's temp file): the header tells NIfTI-1 from -2."""
    import gzip

    from nibabel.fileholders import FileHolder

    with open(path, "rb") as raw:
        head = raw.read(348)
    gz = head[:2] == b"\x1f\x8b"
    head = _gunzipped_head(path) if gz else head
    handle = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 - the image proxy keeps it
    klass = nibabel.Nifti2Image if head[4:12] == NIFTI2_MAGIC else nibabel.Nifti1Image
    return klass.from_file_map({"header": FileHolder(fileobj=handle), "image": FileHolder(fileobj=handle)})


def _plane(shape: tuple[int, ...], axis: int, path: Path | str) -> tuple[int, int, int]:
    """(rows, cols, slices) of the 2-D planes cut along `axis` of the spatial shape."""
    spatial = tuple(int(s) for s in shape[:3])
    if len(spatial) == 2:
        return spatial[0], spatial[1], 1
    if not 0 <= axis <= 2:
        raise DataError(f"{path}: data.scaling.slice_axis={axis} must be 0, 1 or 2")
    rows, cols = (s for i, s in enumerate(spatial) if i != axis)
    return rows, cols, spatial[axis]


def nifti_cost(path: Path | str) -> DecodeCost:
    """Decode cost of one slice (the largest plane of any axis), from the header."""
    img = _load(path)
    planes = [_plane(img.shape, axis, path) for axis in range(min(3, len(img.shape)) if len(img.shape) > 2 else 1)]
    rows, cols, _ = max(planes, key=lambda p: p[0] * p[1])
    slope, _ = img.header.get_slope_inter()
    itemsize = 8 if slope is not None else int(img.get_data_dtype().itemsize)
    return DecodeCost(cols, rows, 1, 1, itemsize)


def nifti_info(path: Path | str, axis: int = 2) -> Any:
    """`ImageInfo` of a volume from its header: one slice's size, 1 channel, slices as pages."""
    img = _load(path)
    rows, cols, n = _plane(img.shape, axis, path)
    slope, _ = img.header.get_slope_inter()
    dtype = "float64" if slope is not None else np.dtype(img.get_data_dtype()).newbyteorder("=").name
    return ImageInfo("nifti", cols, rows, 1, dtype, n)


def slice_count(path: Path | str, axis: int = 2) -> int:
    """Number of 2-D slices along `axis`."""
    img = _load(path)
    return _plane(img.shape, axis, path)[2]


def read_nifti(path: Path | str, axis: int = 2, index: int | None = None) -> np.ndarray:
    """One slice as HxWx1 in the stored dtype (float when the header scales): middle slice by default."""
    img = _load(path)
    _, _, n = _plane(img.shape, axis, path)
    index = n // 2 if index is None else index
    if not 0 <= index < n:
        raise DataError(f"{path}: slice {index} requested but the volume has {n} slices along axis {axis}")
    slicer: list[Any] = [slice(None)] * len(img.shape)
    if len(img.shape) >= 3:
        slicer[axis] = index
    for extra in range(3, len(img.shape)):
        slicer[extra] = 0  # 4-D series: first volume
    try:
        arr = np.asarray(img.dataobj[tuple(slicer)])
    except Exception as exc:
        raise DataError(f"{path}: cannot decode the NIfTI data ({str(exc).splitlines()[0]}); truncated?") from None
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    return arr[:, :, None]
