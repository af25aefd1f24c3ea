"""Uploaded bytes -> the model's input tensor, with the HTTP status each kind of bad upload deserves.

Decoding goes through `dinotune.data.decode` (the training path), so a served image is decoded exactly
as the same file was during training: the bytes are written to a private temporary file because that
module reads paths. The decode budget (`dinotune.data.budget`: pixels per page, and pixels x pages x
channels x bytes for the whole file) is checked from the headers before any pixel is decoded (413).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from dinotune.data.budget import BudgetError, check_cost
from dinotune.data.decode import read_image, sniff_format
from dinotune.data.headers import header_cost
from dinotune.errors import DataError

SUPPORTED = "JPEG, PNG, TIFF, BMP, WebP, GIF or DICOM"


class UploadError(Exception):
    """A request the client must fix; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def decode_upload(data: bytes, name: str, *, channels: int, scaling=None, max_pixels: int) -> np.ndarray:
    """Bytes of one image file -> float32 HxWxC in [0, 1]; raises UploadError (400, 413 or 415)."""
    if not data:
        raise UploadError(400, f"{name}: the upload is empty (0 bytes)")
    fd, tmp = tempfile.mkstemp(prefix="dinotune-upload-")
    path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        fmt = sniff_format(path)
        if fmt is None:
            raise UploadError(415, f"{name}: not a supported image (send {SUPPORTED})")
        _check_header(path, fmt, name, max_pixels)
        try:
            return read_image(path, channels, scaling, max_pixels)
        except BudgetError as err:
            raise UploadError(413, str(err).replace(str(path), name)) from None
        except DataError as err:
            raise UploadError(400, str(err).replace(str(path), name)) from None
    finally:
        path.unlink(missing_ok=True)


def _check_header(path: Path, fmt: str, name: str, max_pixels: int) -> None:
    """Refuse an over-budget upload from its headers alone (PIL's `open`, tifffile's IFDs and pydicom's
    header read no pixel data); 413 when too large, 400 when the header is broken."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            cost = header_cost(path, fmt)
    except Image.DecompressionBombError:
        raise UploadError(413, f"{name}: the image declares too many pixels (decompression-bomb guard)") from None
    except DataError as err:
        raise UploadError(400, str(err).replace(str(path), name)) from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for a broken header
        reason = str(err).replace(str(path), name)
        raise UploadError(400, f"{name}: cannot read the {fmt.upper()} header ({reason}); it is corrupt") from None
    width, height = cost.width, cost.height
    if width * height > max_pixels:
        raise UploadError(
            413,
            f"{name}: {width}x{height} = {width * height} pixels exceeds the server's limit "
            f"of {max_pixels} pixels; downscale the image",
        )
    try:
        check_cost(name, cost, max_pixels)
    except BudgetError as err:
        raise UploadError(413, str(err)) from None
