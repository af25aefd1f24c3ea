"""Image paths as a user gives them on the command line: files as given, folders searched recursively."""

from __future__ import annotations

from pathlib import Path

from dinotune.data.formats import list_images
from dinotune.errors import DataError


def expand_images(items: list[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively; anything else is a clear error."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_images(path))
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"'{item}' is neither an image file nor a folder.")
    if not paths:
        raise DataError("No images to predict: pass image files or folders containing images.")
    return paths
