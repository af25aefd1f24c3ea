"""Pydantic models for the `data:` section of a dinotune config.

Kept free of torch imports so that validating a config (or printing `--help`) stays instant.
Use `load_data_config` rather than calling `DataConfig(...)` directly when the values come from a
user: it turns pydantic's multi-line ValidationError into a one-line `ConfigError` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from dinotune.config import StrictModel, validate
from dinotune.errors import ConfigError

Task = Literal["classify", "segment", "unlabelled"]
Layout = Literal["auto", "imagefolder", "csv", "json", "segmentation", "unlabelled"]
ResizeMode = Literal["crop", "pad", "keep"]
AugmentPreset = Literal["none", "default", "medical", "satellite", "industrial", "microscopy"]

#: PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS); larger images are almost always a mistake.
DEFAULT_MAX_PIXELS = 178_956_970


class ScalingConfig(StrictModel):
    """How raw pixel values become floats in [0, 1] before augmentation.

    The full rule, for every format, is in `dinotune.data.intensity` (and docs/medical.md, docs/satellite.md):
    8-bit images are divided by 255; wider integers by their real bit depth, or by `divisor` (mode `fixed`),
    or per-band `low`/`high` raw values map to 0/1 (mode `percentile`, values from `data stats`), or each
    image's own percentiles map to 0/1 (mode `per_image`).
    """

    mode: Literal["fixed", "percentile", "per_image"] = Field(
        "fixed",
        description="fixed: divide by `divisor`; percentile: map per-band low/high to 0/1 and clip; "
        "per_image: each image's own per-channel `percentiles` map to 0/1 (low-light microscopy, fluorescence).",
    )
    divisor: float | None = Field(
        None, gt=0, description="Divisor for >8-bit integer images (default 65535; e.g. 4095 for 12-bit)."
    )
    low: list[float] | None = Field(None, description="Per-band raw value mapped to 0 (percentile mode).")
    high: list[float] | None = Field(None, description="Per-band raw value mapped to 1 (percentile mode).")
    percentiles: tuple[float, float] = Field(
        (1.0, 99.8), description="per_image mode: the per-image, per-channel percentiles mapped to 0 and 1."
    )
    window: str | list[float] | None = Field(
        None,
        description="Grayscale window: auto (default: the DICOM file's own), none (full stored range), "
        "ct-lung, ct-soft-tissue, ct-bone, ct-brain, or [center, width] in raw units (HU for CT).",
    )
    slice_axis: int | None = Field(
        None, ge=0, le=2, description="NIfTI volumes: axis whose middle slice is read (default 2, usually axial)."
    )

    @model_validator(mode="after")
    def _check(self) -> ScalingConfig:
        from dinotune.data.intensity import resolve_window

        try:
            resolve_window(self.window)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("data.scaling.")) from None
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(f"scaling.percentiles={list(self.percentiles)} needs 0 <= low < high <= 100")
        if self.mode == "percentile":
            if not self.low or not self.high:
                raise ValueError(
                    "scaling.mode=percentile needs scaling.low and scaling.high; "
                    "run `dinotune data stats ROOT` and paste its output"
                )
            if len(self.low) != len(self.high):
                raise ValueError("scaling.low and scaling.high must have the same number of bands")
            if any(h <= lo for lo, h in zip(self.low, self.high, strict=False)):
                raise ValueError("every scaling.high value must be greater than the matching scaling.low")
        return self


class DataConfig(StrictModel):
    """Everything the data layer needs: where the images are and how to turn them into tensors."""

    root: Path = Field(description="Dataset folder (or a CSV file) to read.")
    task: Task | None = Field(None, description="classify, segment or unlabelled; inferred from the layout if unset.")
    layout: Layout = Field("auto", description="Dataset layout; `auto` detects it from the folder structure.")
    csv_file: Path | None = Field(None, description="CSV annotation file (relative to root) if not auto-detected.")
    image_size: int = Field(224, gt=0, description="Side of the square network input (a multiple of the patch).")
    channels: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Input channels: 3 (RGB), 1 (grayscale) or N bands; default: the backbone's in_chans, else 3.",
    )
    resize: ResizeMode = Field("crop", description="crop: shorter side + crop; pad: letterbox; keep: keep aspect.")
    augment: AugmentPreset = Field("default", description="Training augmentation preset.")
    hflip: bool | None = Field(None, description="Override the preset's horizontal flip (medical: off by default).")
    mean: list[float] | None = Field(None, description="Normalisation mean per channel; default: the backbone's.")
    std: list[float] | None = Field(None, description="Normalisation std per channel; default: the backbone's.")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="16-bit / multi-band scaling.")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, gt=0, description="Pixels per page/frame; a file may decode to 6 x this many bytes."
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Validation share when the data has no split folders.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Test share when the data has no split folders.")
    split_seed: int = Field(0, description="Seed of the automatic stratified split.")
    split_file: Path | None = Field(None, description="Where the automatic split is written/reused (run dir).")
    volumes: Literal["middle", "slices"] = Field(
        "middle",
        description="NIfTI volumes: middle (one sample: the middle slice) or slices (one sample per slice along "
        "scaling.slice_axis; segmentation masks then are label volumes).",
    )
    group_by: str | None = Field(
        None,
        description="Keep groups in one split: a DICOM keyword (PatientID, StudyInstanceUID) or a CSV column; "
        "also the key of the leakage check (default for DICOM: PatientID).",
    )
    class_weights: bool = Field(False, description="Weight the loss by inverse class frequency.")
    weighted_sampler: bool = Field(False, description="Oversample rare classes with a weighted sampler.")
    on_bad_file: Literal["skip", "error"] = Field("skip", description="skip (log + replace) or error on bad files.")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    ignore_index: int = Field(255, ge=0, le=255, description="Mask value ignored by the segmentation loss.")
    num_classes: int | None = Field(None, gt=0, description="Segmentation classes if no class_map is given.")
    class_map: Path | None = Field(None, description="YAML/JSON file with class names (and colours).")
    class_mapping: Path | dict[int, int] | None = Field(
        None,
        description="Source->target class ids (file or dict) to merge classes; unlisted -> ignore_index.",
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1 (something must be left to train on)")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and self.channels is not None and len(values) != self.channels:
                raise ValueError(f"{name} has {len(values)} values but channels={self.channels}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("every std value must be positive")
        return self


def load_data_config(values: dict[str, Any] | Path | str) -> DataConfig:
    """Build a DataConfig from a dict or a YAML/JSON file, raising a one-line ConfigError on mistakes.

    A file may hold the data section at top level or under a `data:` key.
    """
    source = "data config"
    if isinstance(values, (str, Path)):
        source = str(values)
        values = _read_mapping(Path(values))
        if isinstance(values.get("data"), dict):
            values = values["data"]
    return validate(DataConfig, values, origin=source)


def _read_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with a ConfigError naming the file on failure."""
    import json

    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping (key: value pairs) at top level")
    return data
