"""Read any supported image file into a float32 HxWxC array in [0, 1], or a mask into integer indices.

The format is decided by the file's first bytes, not its extension, so a text file named `.jpg`
gives a clear `DataError` instead of a PIL traceback. TIFF goes through tifffile (16-bit, many bands,
many pages); PNG/JPEG/BMP/WebP/GIF through PIL with EXIF orientation applied; 16-bit colour PNG
through OpenCV because PIL silently truncates it to 8 bits.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dinotune.data.budget import BudgetError, ImageInfo
from dinotune.data.classmap import ClassMap, build_lut, load_class_map, load_class_mapping, rgb_to_index
from dinotune.data.config import DEFAULT_MAX_PIXELS, ScalingConfig
from dinotune.data.headers import check_budget
from dinotune.data.intensity import Intensity, to_unit
from dinotune.data.nifti import is_nifti, is_nifti_path
from dinotune.errors import DataError

__all__ = ["BudgetError", "ClassMap", "build_lut", "load_class_map", "load_class_mapping", "rgb_to_index"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".dcm", ".dicom"})
DEFAULT_DIVISOR = 65535.0
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, same as PIL's "L"


def is_image_path(path: Path) -> bool:
    """True if the extension is one we read (NIfTI's .nii/.nii.gz included); used when walking folders."""
    return (path.suffix.lower() in IMAGE_EXTENSIONS or is_nifti_path(path)) and not path.name.startswith(".")


def is_listed_image(path: Path) -> bool:
    """Whether a folder walk lists `path`: a known extension, or DICOM named without one.

    Scanners often write DICOM as `IM0001` or `1.2.840.113619.2.55.320` (a numeric "extension"); only
    such names are opened to look for the DICM marker, so a walk stays cheap.
    """
    if is_image_path(path):
        return True
    suffix = path.suffix[1:]
    if path.name.startswith(".") or not (suffix == "" or suffix.isdigit()):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def sniff_format(path: Path) -> str | None:
    """Image format from the magic bytes ("jpeg", "png", "dicom", ...), or None if it is not an image."""
    with open(path, "rb") as f:
        head = f.read(348)
    if head[128:132] == b"DICM":  # first: a DICOM preamble may itself look like a TIFF header
        return "dicom"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"GIF8":
        return "gif"
    return "nifti" if is_nifti(path, head) else None


def _check_file(path: Path) -> str:
    """Return the sniffed format or raise a DataError that says what is wrong with the file."""
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"{path}: file does not exist or cannot be accessed") from None
    if size == 0:
        raise DataError(f"{path}: file is empty (0 bytes); delete it or replace it with the real image")
    fmt = sniff_format(path)
    if fmt is None:
        raise DataError(
            f"{path}: not an image (unknown content despite the '{path.suffix}' extension); remove it from the dataset"
        )
    return fmt


def _tiff_intensity(page) -> Intensity:
    """Bit depth, declared maximum and nodata from a TIFF page's tags (GDAL_NODATA for GeoTIFF)."""
    tags, dtype = page.tags, np.dtype(page.dtype)
    full = float(np.iinfo(dtype).max) if dtype.kind in "ui" else None
    max_value = None
    for name in ("SMaxSampleValue", "MaxSampleValue"):
        tag = tags.get(name)
        if tag is not None and full is not None:
            value = float(np.max(np.asarray(tag.value, dtype=np.float64)))
            if 0 < value < full:
                max_value = value
                break
    nodata = None
    if "GDAL_NODATA" in tags:
        try:
            nodata = float(str(tags["GDAL_NODATA"].value).strip("\x00 "))
        except ValueError:
            nodata = None
    bits = int(page.bitspersample)
    return Intensity(bits if bits < dtype.itemsize * 8 else None, max_value, nodata)


def _tiff_array(path: Path) -> tuple[np.ndarray, Intensity]:
    """Decode a TIFF to HxWxC in its native dtype. Same-shaped pages are stacked as channels."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = series.pages[0] if series.pages else tif.pages[0]
        shape, axes = series.shape, series.axes
        info = _tiff_intensity(page)
        arr = series.asarray()
        extras = [int(e) for e in (getattr(page, "extrasamples", None) or ())]
        alpha = arr.ndim == 3 and axes.endswith("S") and extras and extras[-1] in (1, 2)  # assoc/unassoc alpha
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 2:
        return arr[:, :, None], info
    if arr.ndim != 3:
        raise DataError(f"{path}: TIFF with shape {shape} (axes {axes}) is not 2-D; export one 2-D (multi-band) image")
    if not axes.endswith("S"):  # pages / channels first (e.g. CYX, IYX) -> channels last
        arr = np.moveaxis(arr, 0, -1)
    if alpha and arr.shape[2] in (2, 4):
        arr = arr[:, :, :-1]  # declared alpha channel, not a band
    return arr, info


def _pil_array(path: Path, fmt: str) -> np.ndarray:
    """Decode with PIL (EXIF orientation applied) to HxWxC native dtype; alpha is dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if fmt == "png" and _png_is_16bit_colour(path):
                return _cv2_png16(path)
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "LA", "La", "1"):
                im = im.convert("L" if mode in ("LA", "La", "1") else "RGB")
            elif mode.startswith("I;16"):
                return np.asarray(im).astype(np.uint16)[:, :, None]
            arr = np.asarray(im)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _png_is_16bit_colour(path: Path) -> bool:
    with open(path, "rb") as f:
        ihdr = f.read(26)
    return len(ihdr) == 26 and ihdr[24] == 16 and ihdr[25] in (2, 6)


def _cv2_png16(path: Path) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DataError(f"{path}: 16-bit PNG could not be decoded (truncated or corrupt)")
    return np.ascontiguousarray(arr[:, :, 2::-1])  # BGR(A) -> RGB, alpha dropped


def decode_raw(
    path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS, scaling: ScalingConfig | None = None
) -> tuple[np.ndarray, Intensity, str]:
    """Decode to HxWxC in the native dtype, with what the file declares about its values and its format.

    The decode budget (`dinotune.data.budget`) is checked from the headers first. Every failure becomes
    a DataError naming the file: empty, not an image, truncated, too large (BudgetError). `scaling`
    only chooses the slice axis of NIfTI volumes.
    """
    path = Path(path)
    fmt = _check_file(path)
    check_budget(path, fmt, max_pixels)
    info = Intensity()
    try:
        if fmt == "tiff":
            arr, info = _tiff_array(path)
        elif fmt == "dicom":
            from dinotune.data.dicom import read_dicom_raw

            arr, info = read_dicom_raw(path)
        elif fmt == "nifti":
            from dinotune.data.nifti import read_nifti

            axis = getattr(scaling, "slice_axis", None)
            arr = read_nifti(path, 2 if axis is None else axis)
        else:
            arr = _pil_array(path, fmt)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise BudgetError(f"{path}: image is too large for PIL (decompression-bomb guard)") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot decode {fmt.upper()} ({reason}); the file is truncated or corrupt") from None
    except Exception as exc:  # tifffile raises its own TiffFileError and friends
        raise DataError(f"{path}: cannot decode {fmt.upper()} ({type(exc).__name__}: {exc})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr, info, fmt


def read_raw(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image to HxWxC in its native dtype (uint8, uint16, float32, ...), no scaling."""
    return decode_raw(path, max_pixels)[0]


def scale_to_unit(arr: np.ndarray, scaling: ScalingConfig | None = None, path: Path | str = "") -> np.ndarray:
    """Map native pixel values to float32 in [0, 1] by the rule of `dinotune.data.intensity`."""
    return to_unit(arr, None, scaling, path)


def can_match_channels(have: int, want: int) -> bool:
    """Whether `match_channels` can turn `have` channels into `want` (for header-only checks)."""
    return have == want or (want == 3 and have in (1, 2, 4)) or (want == 1 and have in (2, 3, 4))


def match_channels(arr: np.ndarray, channels: int, path: Path | str = "") -> np.ndarray:
    """Convert HxWxC to the requested channel count: gray<->RGB, or a clear error for band mismatches."""
    have = arr.shape[2]
    if have == channels:
        return arr
    if channels == 3 and have in (1, 2):  # gray (+alpha) -> RGB
        return np.repeat(arr[:, :, :1], 3, axis=2)
    if channels == 3 and have == 4:  # RGBA / RGB + extra band -> RGB
        return arr[:, :, :3]
    if channels == 1 and have in (3, 4):
        return (arr[:, :, :3].astype(np.float32) @ _LUMA)[:, :, None].astype(arr.dtype)
    if channels == 1 and have == 2:
        return arr[:, :, :1]
    raise DataError(
        f"{path}: image has {have} channel(s) but data.channels={channels}; "
        f"set data.channels: {have} (and matching mean/std) or convert the file"
    )


def read_image(
    path: Path | str,
    channels: int = 3,
    scaling: ScalingConfig | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode `path` to a float32 HxWxC array in [0, 1] with exactly `channels` channels."""
    if _check_file(Path(path)) == "dicom":  # windowed from its modality values, decoded once
        from dinotune.data.dicom import read_dicom

        check_budget(path, "dicom", max_pixels)
        return match_channels(read_dicom(path, getattr(scaling, "window", None)), channels, path)
    arr, info, _ = decode_raw(path, max_pixels, scaling)
    arr = match_channels(arr, channels, path)
    return to_unit(arr, info, scaling, path)


def read_mask(
    path: Path | str,
    colours: list[tuple[int, int, int]] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a mask to an HxW integer array of class indices.

    Palette PNGs give their palette indices (not colours), grayscale PNG/TIFF their values. An RGB
    mask is accepted only when a class map with colours is given (unknown colours -> 255).
    """
    path = Path(path)
    fmt = _check_file(path)
    check_budget(path, fmt, max_pixels)
    try:
        if fmt == "tiff":
            arr = _tiff_array(path)[0]
        elif fmt == "nifti":  # a label slice (or a label volume's middle slice)
            from dinotune.data.nifti import read_nifti

            arr = read_nifti(path)
            if np.issubdtype(arr.dtype, np.floating) and np.array_equal(arr, np.round(arr)) and arr.min() >= 0:
                arr = arr.astype(np.uint16)  # label volumes are often stored as integral floats
        else:
            with Image.open(path) as im:
                if im.mode in ("P", "L", "I", "I;16", "1") or im.mode.startswith("I;16"):
                    arr = np.asarray(im)
                else:
                    arr = np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot decode mask ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3:
        if not colours:
            raise DataError(
                f"{path}: mask is a colour image; save masks as index PNGs (palette or grayscale) "
                "or give a class_map with colours"
            )
        return rgb_to_index(arr[:, :, :3], colours)
    if np.issubdtype(arr.dtype, np.floating) or (arr.size and (arr.min() < 0)):
        raise DataError(f"{path}: mask holds floats or negative values; masks must hold class indices")
    return arr.astype(np.uint16 if arr.dtype.itemsize > 1 else np.uint8)


def image_info(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Header-only facts (size, channels, dtype); raises DataError like read_raw for bad files."""
    path = Path(path)
    fmt = _check_file(path)
    if fmt == "dicom":
        from dinotune.data.dicom import dicom_info

        return dicom_info(path)
    if fmt == "nifti":
        from dinotune.data.nifti import nifti_info

        return nifti_info(path)
    try:
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:  # channels as _tiff_array decodes them: series 0, no alpha
                series = tif.series[0]
                page = series.pages[0] if series.pages else tif.pages[0]
                h, w = int(page.imagelength), int(page.imagewidth)
                ch = max(1, math.prod(int(s) for s in series.shape) // max(1, h * w))
                extras = [int(e) for e in (getattr(page, "extrasamples", None) or ())]
                if series.axes.endswith("S") and ch in (2, 4) and extras and extras[-1] in (1, 2):
                    ch -= 1
                return ImageInfo(fmt, w, h, ch, np.dtype(page.dtype).name, len(tif.pages))
        with Image.open(path) as im:
            w, h, mode = im.width, im.height, im.mode
            orientation = im.getexif().get(0x0112, 1) if fmt in ("jpeg", "webp", "png") else 1
    except Exception as exc:
        raise DataError(f"{path}: cannot read {fmt.upper()} header ({exc})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if fmt == "png" and _png_is_16bit_colour(path):
        return ImageInfo(fmt, w, h, 3, "uint16")
    bands = {"1": 1, "L": 1, "P": 3, "LA": 1, "I": 1, "F": 1, "RGB": 3, "RGBA": 3, "CMYK": 3, "YCbCr": 3}
    dtype = "uint16" if mode.startswith("I;16") or mode == "I" else "float32" if mode == "F" else "uint8"
    return ImageInfo(fmt, w, h, bands.get(mode, 1 if mode.startswith("I") else 3), dtype)
