"""What a file will cost to decode, read from its headers whatever its format, and the budget check.

Above the format readers (DICOM, NIfTI) so that they can use the budget's records without a cycle.
"""

from __future__ import annotations

from pathlib import Path

from dinotune.data.budget import BudgetError, DecodeCost, _pil_cost, _tiff_cost, check_cost
from dinotune.data.dicom import dicom_cost
from dinotune.data.nifti import nifti_cost
from dinotune.errors import DataError


def header_cost(path: Path, fmt: str) -> DecodeCost:
    """The decode cost of `path` (already sniffed as `fmt`), reading headers only."""
    if fmt == "tiff":
        return _tiff_cost(path)
    if fmt == "dicom":
        return dicom_cost(path)
    if fmt == "nifti":
        return nifti_cost(path)
    return _pil_cost(path)


def check_budget(path: Path | str, fmt: str, max_pixels: int) -> DecodeCost:
    """Read the headers of `path`, refuse it if over budget, and return its cost.

    Header-parsing failures become a one-line DataError (corrupt file), never a traceback.
    """
    path = Path(path)
    try:
        cost = header_cost(path, fmt)
    except DataError:
        raise
    except Exception as exc:  # PIL / tifffile / pydicom raise many types for a broken header
        if type(exc).__name__ == "DecompressionBombError":
            raise BudgetError(f"{path}: the image declares too many pixels (decompression-bomb guard)") from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read the {fmt.upper()} header ({reason}); the file is corrupt") from None
    check_cost(path, cost, max_pixels)
    return cost
