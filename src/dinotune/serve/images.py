"""Uploaded bytes -> the model's input tensor, with the HTTP status each kind of bad upload deserves.

`read_uploads` takes the images out of a request: multipart file parts or base64 JSON.
Decoding goes through `dinotune.data.decode` (the training path), so a served image is decoded exactly
as the same file was during training: the bytes are written to a private temporary file because that
module reads paths. The decode budget (`dinotune.data.budget`: pixels per page, and pixels x pages x
channels x bytes for the whole file) is checked from the headers before any pixel is decoded (413).
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

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


async def read_uploads(request: Request, batch: bool, limit: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image: multipart file parts, or JSON {"image": b64} / {"images": [b64, ...]}."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=limit + 1, max_fields=limit + 8) as form:
            files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
            files.sort(key=lambda kv: kv[0] != "file" and kv[0] != "files")
            uploads = [(f.filename or key, await f.read()) for key, f in files]
    elif content_type == "application/json":
        try:
            payload = await request.json()
        except ValueError:
            raise UploadError(400, "body is not valid JSON") from None
        except RecursionError:  # a deeply nested body: refuse it, never a 500
            raise UploadError(400, "JSON body is nested too deeply") from None
        key = "images" if batch else "image"
        items = payload.get(key) if isinstance(payload, dict) else None
        items = [items] if isinstance(items, str) and not batch else items
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            shape = '["<base64>", ...]' if batch else '"<base64>"'
            raise UploadError(400, f'JSON body must be {{"{key}": {shape}}}')
        uploads = [(f"image {i}", _b64(item, i)) for i, item in enumerate(items)]
    else:
        raise UploadError(415, "send multipart/form-data with a file part, or application/json with base64 images")
    if not uploads:
        raise UploadError(400, "no image in the request (multipart file part 'file' or JSON 'image')")
    if not batch and len(uploads) > 1:
        raise UploadError(400, f"{len(uploads)} images sent to /predict; send several to /predict/batch")
    if len(uploads) > limit:
        raise UploadError(413, f"{len(uploads)} images in one request; the limit is {limit}")
    return uploads


def _b64(text: str, index: int) -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]  # data URL
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(400, f"image {index}: not valid base64") from None
