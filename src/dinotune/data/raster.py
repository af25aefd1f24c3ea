"""Scenes larger than a model input, read window by window with their georeferencing (extra `geo`: rasterio).

A GeoTIFF is opened once and read in windows, so a 20000 x 20000 scene never sits in memory whole and
the decode budget applies to each window, not to the scene. Windows are scaled to [0, 1] by the one
intensity rule (`dinotune.data.intensity`) with values of the whole scene: where that rule depends on
the image (`scaling.mode: per_image`, float rasters outside [0, 1]) the scene's statistics are measured
once on a decimated read and applied to every window, so tiles never get contrasts of their own.

Other files (PNG, DICOM, NIfTI, TIFFs whose bands are pages, any TIFF without rasterio installed) are
decoded whole once, as everywhere else, and cut in memory; they carry no georeferencing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.data.config import DEFAULT_MAX_PIXELS, ScalingConfig
from dinotune.data.decode import _tiff_intensity, image_info, match_channels, read_image, sniff_format
from dinotune.data.intensity import Intensity, to_unit
from dinotune.errors import DataError

log = logging.getLogger(__name__)
INSTALL = "pip install 'dinotune[geo]'"
OVERVIEW_SIDE = 1024  # longest side of the decimated read that scene statistics come from
GEO_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory
_warned: set[str] = set()


@dataclass(frozen=True)
class Georef:
    """Where a scene's pixels lie on the ground: its CRS (WKT) and affine pixel -> map transform."""

    crs: str | None
    transform: tuple[float, float, float, float, float, float]  # a, b, c, d, e, f (rasterio's Affine order)

    def xy(self, col: float, row: float) -> tuple[float, float]:
        """Map coordinates of a pixel position (col, row); pixel centres are at +0.5."""
        a, b, c, d, e, f = self.transform
        return a * col + b * row + c, d * col + e * row + f


class Scene:
    """A raster read window by window: `read(row, col, height, width)` gives float32 HxWxC in [0, 1]."""

    def __init__(self, path: Path, height: int, width: int, channels: int, georef: Georef | None) -> None:
        self.path, self.height, self.width, self.channels, self.georef = path, height, width, channels, georef

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (nothing to do for an in-memory scene)."""

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class ArrayScene(Scene):
    """A file decoded whole (the ordinary decode path), cut in memory."""

    def __init__(self, path: Path, image: np.ndarray, georef: Georef | None = None) -> None:
        super().__init__(path, image.shape[0], image.shape[1], image.shape[2], georef)
        self.image = image

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        return self.image[row : row + height, col : col + width]


class RasterioScene(Scene):
    """A TIFF read through rasterio, one window at a time, scaled with the scene's own statistics."""

    def __init__(self, path: Path, dataset: Any, bands: int, channels: int, info: Intensity, scaling: Any) -> None:
        super().__init__(path, dataset.height, dataset.width, channels, georef_of(dataset))
        self.dataset, self.info = dataset, info
        self.bands = list(range(1, bands + 1))  # the bands the ordinary decode reads (a declared alpha left out)
        self.scaling = scene_scaling(self._raw_overview(), dataset.dtypes[0], info, scaling)

    def _raw(self, window: Any = None, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        arr = self.dataset.read(self.bands, window=window, out_shape=out_shape)
        return match_channels(np.moveaxis(arr, 0, -1), self.channels, self.path)

    def _raw_overview(self) -> np.ndarray:
        step = max(1, -(-max(self.height, self.width) // OVERVIEW_SIDE))
        return self._raw(out_shape=(len(self.bands), -(-self.height // step), -(-self.width // step)))

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        from rasterio.windows import Window

        return to_unit(self._raw(Window(col, row, width, height)), self.info, self.scaling, self.path)

    def close(self) -> None:
        self.dataset.close()


def georef_of(dataset: Any) -> Georef | None:
    """A rasterio dataset's georeferencing; None for a plain image (no CRS, identity transform)."""
    t = dataset.transform
    identity = tuple(t)[:6] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    if dataset.crs is None and identity:
        return None
    crs = dataset.crs.to_wkt() if dataset.crs is not None else None
    return Georef(crs, (t.a, t.b, t.c, t.d, t.e, t.f))


def scene_scaling(
    overview: np.ndarray, dtype: str, info: Intensity, scaling: ScalingConfig | None
) -> ScalingConfig | None:
    """The scaling every window of a scene gets: `scaling` itself, unless the intensity rule would measure
    each image (per_image percentiles, float stretch), then fixed percentile values measured on `overview`."""
    mode = getattr(scaling, "mode", "fixed")
    float_stretch = np.dtype(dtype).kind == "f" and mode == "fixed" and getattr(scaling, "window", None) is None
    if mode != "per_image" and not float_stretch:
        return scaling
    data = overview.astype(np.float64)
    bad = ~np.isfinite(data).all(axis=2)
    if info.nodata is not None:
        bad |= (overview == np.asarray(info.nodata, dtype=overview.dtype)).any(axis=2)
    values = data[~bad]  # (N, C) valid pixels
    if values.size == 0:
        return scaling
    if mode == "per_image":
        low, high = np.percentile(values, scaling.percentiles, axis=0)  # type: ignore[union-attr]
    else:
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0.0 and hi <= 1.0:
            return scaling
        low, high = np.full(values.shape[1], lo), np.full(values.shape[1], hi)
    high = np.maximum(high, low + 1e-6)
    return ScalingConfig(mode="percentile", low=[float(v) for v in low], high=[float(v) for v in high])


def _rasterio() -> Any:
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


def has_geotags(path: Path) -> bool:
    """Whether a TIFF carries GeoTIFF tags (read with tifffile: no rasterio needed to know)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return any(code in tif.pages[0].tags for code in GEO_TAGS)
    except Exception:
        return False


def open_scene(
    path: Path | str, channels: int = 3, scaling: ScalingConfig | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Scene:
    """Open `path` for windowed reading (see the module docstring for which files keep georeferencing)."""
    path = Path(path)
    if (sniff_format(path) if path.is_file() else None) != "tiff":
        return ArrayScene(path, read_image(path, channels, scaling, max_pixels))
    rasterio = _rasterio()
    if rasterio is None:
        if has_geotags(path) and "geo" not in _warned:
            _warned.add("geo")
            log.warning("%s: georeferencing is not kept without rasterio: %s", path, INSTALL)
        return ArrayScene(path, read_image(path, channels, scaling, max_pixels))
    import tifffile

    bands = image_info(path).channels  # as the ordinary decode sees them (alpha dropped, pages as bands)
    with tifffile.TiffFile(path) as tif:
        info = _tiff_intensity(tif.series[0].pages[0] if tif.series[0].pages else tif.pages[0])
    try:
        dataset = rasterio.open(path)
    except Exception as exc:
        raise DataError(f"{path}: rasterio cannot open it ({str(exc).splitlines()[0]})") from None
    if dataset.count < bands:  # bands stored as pages: decode whole with tifffile, keep the georeferencing
        georef = georef_of(dataset)
        dataset.close()
        return ArrayScene(path, read_image(path, channels, scaling, max_pixels), georef)
    info = Intensity(info.bits, info.max_value, dataset.nodata if dataset.nodata is not None else info.nodata)
    try:
        return RasterioScene(path, dataset, bands, channels, info, scaling)
    except BaseException:
        dataset.close()
        raise


def write_mask(path: Path, mask: np.ndarray, colours: list[list[int]], georef: Georef | None) -> None:
    """A class-index mask as a GeoTIFF (`georef`'s CRS and transform, a colour map, deflate), atomically."""
    from dinotune.atomic import atomic_path

    rasterio = _rasterio()
    if rasterio is None:
        raise DataError(f"{path}: writing a GeoTIFF needs rasterio: {INSTALL}")
    from rasterio.transform import Affine

    dtype = "uint8" if mask.max(initial=0) < 256 else "uint16"
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": mask.shape[0],
        "width": mask.shape[1],
        "count": 1,
        "dtype": dtype,
        "compress": "deflate",
        "tiled": mask.shape[0] >= 256 and mask.shape[1] >= 256,
    }
    if georef is not None:
        profile.update(crs=georef.crs, transform=Affine(*georef.transform))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as out:
        out.write(mask.astype(dtype), 1)
        if dtype == "uint8":
            out.write_colormap(1, {i: (*map(int, c[:3]), 255) for i, c in enumerate(colours[:256])})


__all__ = ["ArrayScene", "Georef", "RasterioScene", "Scene", "has_geotags", "open_scene", "scene_scaling", "write_mask"]
