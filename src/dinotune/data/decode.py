"""Read any supported image file into a float32 HxWxC array in [0, 1], or a mask into integer indices.

The format is decided by the file's first bytes, not its extension, so a text file named `.jpg`
gives a clear `DataError` instead of a PIL traceback. TIFF goes through tifffile (16-bit, many bands,
many pages); PNG/JPEG/BMP/WebP/GIF through PIL with EXIF orientation applied; 16-bit colour PNG
through OpenCV because PIL silently truncates it to 8 bits.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dinotune.data.config import DEFAULT_MAX_PIXELS, ScalingConfig
from dinotune.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
DEFAULT_DIVISOR = 65535.0
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, same as PIL's "L"


@dataclass(frozen=True)
class ImageInfo:
    """Header facts about an image: enough for `data check` without decoding pixels."""

    format: str
    width: int
    height: int
    channels: int
    dtype: str  # numpy dtype name of the decoded samples, e.g. "uint8", "uint16"
    pages: int = 1


def is_image_path(path: Path) -> bool:
    """True if the extension is one we read; used when walking folders."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def sniff_format(path: Path) -> str | None:
    """Image format from the magic bytes ("jpeg", "png", ...), or None if it is not an image."""
    with open(path, "rb") as f:
        head = f.read(16)
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
    return None


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


def _guard(path: Path, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise DataError(
            f"{path}: {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels} "
            "(decompression-bomb guard); downscale the image or raise data.max_pixels"
        )


def _tiff_array(path: Path, max_pixels: int) -> np.ndarray:
    """Decode a TIFF to HxWxC in its native dtype. Same-shaped pages are stacked as channels."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = series.pages[0] if series.pages else tif.pages[0]
        shape, axes = series.shape, series.axes
        h, w = int(page.shape[0]), int(page.shape[1])
        _guard(path, h, w, max_pixels)
        arr = series.asarray()
        extras = [int(e) for e in (getattr(page, "extrasamples", None) or ())]
        alpha = arr.ndim == 3 and axes.endswith("S") and extras and extras[-1] in (1, 2)  # assoc/unassoc alpha
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim != 3:
        raise DataError(f"{path}: TIFF with shape {shape} (axes {axes}) is not 2-D; export one 2-D (multi-band) image")
    if not axes.endswith("S"):  # pages / channels first (e.g. CYX, IYX) -> channels last
        arr = np.moveaxis(arr, 0, -1)
    if alpha and arr.shape[2] in (2, 4):
        arr = arr[:, :, :-1]  # declared alpha channel, not a band
    return arr


def _pil_array(path: Path, fmt: str, max_pixels: int) -> np.ndarray:
    """Decode with PIL (EXIF orientation applied) to HxWxC native dtype; alpha is dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            _guard(path, im.height, im.width, max_pixels)
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


def read_raw(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image to HxWxC in its native dtype (uint8, uint16, float32, ...), no scaling.

    Every failure becomes a DataError naming the file: empty, not an image, truncated, too large.
    """
    path = Path(path)
    fmt = _check_file(path)
    try:
        arr = _tiff_array(path, max_pixels) if fmt == "tiff" else _pil_array(path, fmt, max_pixels)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"{path}: image is too large for PIL (decompression-bomb guard)") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot decode {fmt.upper()} ({reason}); the file is truncated or corrupt") from None
    except Exception as exc:  # tifffile raises its own TiffFileError and friends
        raise DataError(f"{path}: cannot decode {fmt.upper()} ({type(exc).__name__}: {exc})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr


def scale_to_unit(arr: np.ndarray, scaling: ScalingConfig | None = None, path: Path | str = "") -> np.ndarray:
    """Map native pixel values to float32 in [0, 1] following the documented rules.

    uint8 -> /255 (unless percentile mode); wider integers -> /divisor (default 65535);
    floats -> kept; percentile mode -> (x - low) / (high - low) per band. Always clipped to [0, 1].
    """
    scaling = scaling or ScalingConfig()
    if scaling.mode == "percentile":
        bands = arr.shape[2]
        low = np.asarray(scaling.low, dtype=np.float32)
        high = np.asarray(scaling.high, dtype=np.float32)
        if low.size not in (1, bands):
            raise DataError(f"{path}: has {bands} bands but scaling.low/high have {low.size} values")
        out = (arr.astype(np.float32) - low) / (high - low)
    elif arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.float32) / float(scaling.divisor or DEFAULT_DIVISOR)
    else:
        out = arr.astype(np.float32)
        if scaling.divisor:
            out /= float(scaling.divisor)
        out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)


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
    arr = read_raw(path, max_pixels)
    arr = match_channels(arr, channels, path)
    return scale_to_unit(arr, scaling, path)


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
    try:
        if fmt == "tiff":
            arr = _tiff_array(path, max_pixels)
        else:
            with Image.open(path) as im:
                _guard(path, im.height, im.width, max_pixels)
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


def rgb_to_index(rgb: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """Turn a colour-coded mask into indices using the class map's colours (unknown -> 255)."""
    key = (rgb[:, :, 0].astype(np.int64) << 16) | (rgb[:, :, 1].astype(np.int64) << 8) | rgb[:, :, 2]
    out = np.full(key.shape, 255, dtype=np.uint8)
    for idx, (r, g, b) in enumerate(colours):
        out[key == ((r << 16) | (g << 8) | b)] = idx
    return out


def image_info(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Header-only facts (size, channels, dtype); raises DataError like read_raw for bad files."""
    path = Path(path)
    fmt = _check_file(path)
    try:
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                n_pages = len(tif.pages)
                h, w = int(page.imagelength), int(page.imagewidth)
                ch = int(page.samplesperpixel) * (n_pages if len(tif.series[0].shape) > 2 and n_pages > 1 else 1)
                return ImageInfo(fmt, w, h, ch, np.dtype(page.dtype).name, n_pages)
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


@dataclass
class ClassMap:
    names: list[str]
    colours: list[tuple[int, int, int]] | None = field(default=None)


def load_class_map(path: Path | str) -> ClassMap:
    """Read class names (and optional RGB colours) from YAML/JSON.

    Accepts a list of names, {id: name}, a list of {name, color}, or any of these under `classes:`.
    """
    data = _read_structured(Path(path))
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if isinstance(data, dict):
        try:
            data = [data[k] for k in sorted(data, key=int)]
        except (TypeError, ValueError):
            raise DataError(f"{path}: class map keys must be class ids (0, 1, ...)") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: class map must be a list of class names or {{id: name}}")
    names, colours = [], []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            names.append(str(item.get("name", i)))
            colour = item.get("color", item.get("colour"))
            if colour is not None:
                if not (isinstance(colour, list) and len(colour) == 3):
                    raise DataError(f"{path}: class {i} colour must be [r, g, b]")
                colours.append(tuple(int(c) for c in colour))
        else:
            names.append(str(item))
    if colours and len(colours) != len(names):
        raise DataError(f"{path}: give a colour for every class or for none")
    return ClassMap(names, colours or None)


def load_class_mapping(mapping: Path | str | dict[int, int]) -> dict[int, int]:
    """Read a source-id -> target-id mapping (dict or YAML/JSON file, optionally under `mapping:`)."""
    data = mapping if isinstance(mapping, dict) else _read_structured(Path(mapping))
    if isinstance(data, dict) and isinstance(data.get("mapping"), dict):
        data = data["mapping"]
    try:
        return {int(k): int(v) for k, v in data.items()}
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{mapping}: class mapping must be {{source_id: target_id}} with integers") from None


def build_lut(mapping: dict[int, int], ignore_index: int = 255, size: int = 256) -> np.ndarray:
    """Lookup table applying a class mapping; unlisted source ids and ignore_index map to ignore_index."""
    lut = np.full(max(size, max(mapping, default=0) + 1), ignore_index, dtype=np.int64)
    for src, dst in mapping.items():
        if src < 0:
            raise DataError(f"class mapping source id {src} is negative")
        lut[src] = dst
    lut[ignore_index] = mapping.get(ignore_index, ignore_index)
    return lut


def _read_structured(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
