"""NIfTI volumes and multi-frame DICOM files as one sample per 2-D slice or frame (`data.volumes: slices`).

Each slice along `data.scaling.slice_axis` (default 2) is written once as a 2-D NIfTI file of its own,
under `$DINOTUNE_HOME/slices/<content digest of the volume>/`, holding the values reading the volume
gives (stored dtype, or float64 after scl_slope/scl_inter), so it decodes to exactly those values.
A slice is then an ordinary file: the feature cache (keyed by file content), `data check`, training,
predict and serve treat it like any image, and nothing else needs to know about volumes. Slices of
one volume share its group, so the automatic split never parts them (`dinotune.data.splits`).

A volume's mask must be a label volume of the same shape (sliced the same way); a 2-D mask for a
volume is an error. A multi-frame DICOM file becomes single-frame DICOM files, one per frame, with the
file's header (and the frame's own rescale/window from the functional groups of enhanced files).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.atomic import atomic_path
from dinotune.config import cache_home
from dinotune.data.decode import sniff_format
from dinotune.data.nifti import _load, is_nifti_path
from dinotune.data.spec import DatasetSpec, Sample
from dinotune.errors import DataError


def _digest(path: Path, axis: int) -> str:
    digest = hashlib.sha256(f"axis={axis};".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


def slice_files(path: Path, axis: int, cache: Path) -> list[Path]:
    """The 2-D slice files of a volume along `axis` (written on first use); [path] for a 2-D image."""
    import nibabel

    img = _load(path)
    if len(img.shape) < 3 or img.shape[axis] == 1:
        return [path]
    folder = cache / _digest(path, axis)
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    names = [folder / f"{stem}_{'ijk'[axis]}{k:04d}.nii" for k in range(int(img.shape[axis]))]
    if all(n.is_file() for n in names):
        return names
    data = np.asarray(img.dataobj)  # the values reading gives: float when the header scales, else stored
    data = data.astype(data.dtype.newbyteorder("="), copy=False)
    for k, name in enumerate(names):
        plane = np.take(data, k, axis=axis)
        plane = plane[..., 0] if plane.ndim > 2 else plane  # 4-D series: first volume, as reading does
        out = nibabel.Nifti1Image(np.ascontiguousarray(plane), img.affine)
        out.header.set_data_dtype(plane.dtype)
        name.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(name) as tmp:
            nibabel.save(out, str(tmp.with_suffix(".nii")))
            tmp.with_suffix(".nii").replace(tmp)
    return names


def _per_frame(ds: Any, k: int) -> dict[str, Any]:
    """Frame k's own rescale and window (enhanced multi-frame files keep them per frame) as plain attributes."""
    out: dict[str, Any] = {}
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    for group in [ds.get("SharedFunctionalGroupsSequence", [None])[0], groups[k] if groups else None]:
        for seq, keys in (("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
                          ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth"))):  # fmt: skip
            item = group.get(seq, [None])[0] if group is not None else None
            out.update({key: item.get(key) for key in keys if item is not None and item.get(key) is not None})
    return out


def frame_files(path: Path, cache: Path) -> list[Path]:
    """The frames of a multi-frame DICOM file as single-frame files (written on first use); [path] otherwise.

    Each frame keeps the header (so modality LUT, window and MONOCHROME1 apply as to the file), with its
    own rescale/window when the file stores them per frame; colour frames are stored as decoded RGB."""
    import copy

    import pydicom
    from pydicom.pixels import pixel_array
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n <= 1:
        return [path]
    folder = cache / _digest(path, -1)
    names = [folder / f"{path.stem}_f{k:04d}.dcm" for k in range(n)]
    if all(name.is_file() for name in names):
        return names
    for k, name in enumerate(names):
        frame = np.ascontiguousarray(pixel_array(ds, index=k))
        out = copy.deepcopy(ds)
        for key in ("NumberOfFrames", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            if key in out:
                delattr(out, key)
        for key, value in _per_frame(ds, k).items():
            setattr(out, key, value)
        if int(ds.get("SamplesPerPixel", 1)) == 3:
            out.PhotometricInterpretation, out.PlanarConfiguration = "RGB", 0
        out.PixelData = frame.tobytes()
        out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(ds.get("SOPInstanceUID", path)), str(k)])
        name.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(name) as tmp:
            out.save_as(tmp, enforce_file_format=True)
    return names


def _expand(sample: Sample, axis: int, cache: Path) -> list[Sample]:
    if sniff_format(sample.path) == "dicom":
        return [Sample(p, sample.label, sample.group or str(sample.path)) for p in frame_files(sample.path, cache)]
    if not is_nifti_path(sample.path):
        return [sample]
    images = slice_files(sample.path, axis, cache)
    group = sample.group or str(sample.path)
    if not isinstance(sample.label, Path):
        return [Sample(p, sample.label, group) for p in images]
    masks = slice_files(sample.label, axis, cache) if is_nifti_path(sample.label) else [sample.label]
    if len(masks) != len(images):
        raise DataError(
            f"{sample.label}: {len(masks)} mask slice(s) for {len(images)} image slices of {sample.path}; "
            "a volume needs a label volume of the same shape"
        )
    return [Sample(i, m, group) for i, m in zip(images, masks, strict=True)]


def expand_volumes(spec: DatasetSpec, axis: int | None = None, cache: Path | None = None) -> DatasetSpec:
    """`spec` with every NIfTI volume replaced by its slices (labels and groups kept)."""
    axis = 2 if axis is None else axis
    cache = cache or cache_home() / "slices"
    spec.splits = {name: [s for sample in samples for s in _expand(sample, axis, cache)]
                   for name, samples in spec.splits.items()}  # fmt: skip
    spec.volumes, spec.slice_axis = "slices", axis
    return spec


__all__ = ["expand_volumes", "frame_files", "slice_files"]
