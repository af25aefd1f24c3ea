"""Decoding with a budget: what a file will cost in memory, read from its headers before any pixel.

A small upload can declare a huge image: a 1.4 MB zlib TIFF of 300 pages of 2048x2048 decodes to
1.26 GB. Every decode in dinotune (training, `predict`, `serve`) goes through `check_budget`, which
reads only headers and refuses a file when

* one page/frame has more than `max_pixels` pixels (the classic decompression-bomb guard), or
* the samples that will actually be decoded (width x height x pages x channels x bytes per sample)
  exceed `budget_bytes(max_pixels)` = `max_pixels` x 6 bytes, i.e. the largest allowed image as 16-bit RGB.

What "will be decoded" means per format: TIFF - the whole first series (all its pages, since pages are
stacked as channels); DICOM - one frame (multi-frame files are read frame by frame); PNG/JPEG/GIF/WebP -
the first frame of an animation; NIfTI - one slice. Refusals raise `BudgetError`, a `DataError` that
`serve` answers with HTTP 413.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from dinotune.errors import DataError

#: Bytes per allowed pixel in the whole-file budget: 3 channels x 2 bytes (16-bit RGB).
BYTES_PER_PIXEL = 6


class BudgetError(DataError):
    """A file declares more pixels or bytes than the decode budget allows (serve: HTTP 413)."""


@dataclass(frozen=True)
class DecodeCost:
    """What decoding a file will allocate, from its headers: one page's size and the samples decoded."""

    width: int
    height: int
    pages: int = 1  # pages/frames/slices that will be decoded
    channels: int = 1
    itemsize: int = 1

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.pages * self.channels * self.itemsize


def budget_bytes(max_pixels: int) -> int:
    """Whole-file decode budget for a given per-image pixel limit."""
    return max_pixels * BYTES_PER_PIXEL


def _tiff_cost(path: Path) -> DecodeCost:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = series.pages[0] if series.pages else tif.pages[0]
        h, w = int(page.imagelength), int(page.imagewidth)
        samples = math.prod(int(s) for s in series.shape)
        per_plane = max(1, h * w)
        return DecodeCost(w, h, max(1, samples // per_plane), 1, int(series.dtype.itemsize))


def _pil_cost(path: Path) -> DecodeCost:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:  # reads the header only; animations decode their first frame
            mode, bands = im.mode, len(im.getbands())
            w, h = im.width, im.height
    itemsize = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") else 1
    if mode in ("RGB", "RGBA") and _png_16bit(path):  # decoded by OpenCV as uint16
        itemsize = 2
    return DecodeCost(w, h, 1, max(bands, 3 if mode == "P" else bands), itemsize)


def _png_16bit(path: Path) -> bool:
    with open(path, "rb") as f:
        ihdr = f.read(26)
    return len(ihdr) == 26 and ihdr[:8] == b"\x89PNG\r\n\x1a\n" and ihdr[24] == 16


def check_cost(path: Path | str, cost: DecodeCost, max_pixels: int) -> None:
    """Raise BudgetError (one line naming the file and the fix) if `cost` is over the budget."""
    w, h = cost.width, cost.height
    if w * h > max_pixels:
        raise BudgetError(
            f"{path}: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} "
            "(decompression-bomb guard); downscale the image or raise data.max_pixels"
        )
    limit = budget_bytes(max_pixels)
    if cost.nbytes > limit:
        raise BudgetError(
            f"{path}: decoding needs {w}x{h} x {cost.pages} page(s) x {cost.channels} channel(s) x "
            f"{cost.itemsize} byte(s) = {cost.nbytes / 2**20:.0f} MiB, over the decode budget of "
            f"{limit / 2**20:.0f} MiB (6 bytes x max_pixels={max_pixels}); "
            "export only the pages you need or raise data.max_pixels"
        )


@dataclass(frozen=True)
class ImageInfo:
    """Header facts about an image: enough for `data check` without decoding pixels."""

    format: str
    width: int
    height: int
    channels: int
    dtype: str  # numpy dtype name of the decoded samples, e.g. "uint8", "uint16"
    pages: int = 1
