"""Data layer: read users' images in any common layout and format, check them, and feed training.

`load_dataset` describes a folder as a `DatasetSpec`; `read_image` decodes one file to float32 HxWxC in
[0, 1]; `build_transform` makes the train/eval pipeline; the Dataset classes tie these together;
`check_dataset` finds broken files, duplicates and imbalance before a run wastes hours on them, and
`preflight(spec, cfg)` stops a run on dataset-level problems (one class, wrong channel count) in one line.
Submodules import torch/albumentations only when used, so `import dinotune.data.config` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "DataConfig": "dinotune.data.config",
    "ScalingConfig": "dinotune.data.config",
    "load_data_config": "dinotune.data.config",
    "read_image": "dinotune.data.decode",
    "read_mask": "dinotune.data.decode",
    "read_raw": "dinotune.data.decode",
    "image_info": "dinotune.data.decode",
    "Sample": "dinotune.data.formats",
    "DatasetSpec": "dinotune.data.formats",
    "detect_layout": "dinotune.data.formats",
    "load_dataset": "dinotune.data.formats",
    "load_class_map": "dinotune.data.decode",
    "load_class_mapping": "dinotune.data.decode",
    "build_lut": "dinotune.data.decode",
    "build_transform": "dinotune.data.transforms",
    "transform_from_config": "dinotune.data.transforms",
    "PRESETS": "dinotune.data.transforms",
    "ClassificationDataset": "dinotune.data.datasets",
    "SegmentationDataset": "dinotune.data.datasets",
    "UnlabelledDataset": "dinotune.data.datasets",
    "class_weights": "dinotune.data.datasets",
    "weighted_sampler": "dinotune.data.datasets",
    "build_datasets": "dinotune.data.datasets",
    "check_dataset": "dinotune.data.check",
    "CheckReport": "dinotune.data.check",
    "compute_stats": "dinotune.data.stats",
    "preflight": "dinotune.data.preflight",
    "dataset_problems": "dinotune.data.preflight",
    "check_budget": "dinotune.data.headers",
    "BudgetError": "dinotune.data.budget",
    "to_unit": "dinotune.data.intensity",
    "WINDOW_PRESETS": "dinotune.data.intensity",
    "read_dicom": "dinotune.data.dicom",
    "dicom_modality": "dinotune.data.dicom",
    "digits_imagefolder": "dinotune.data.bundled",
    "elpv_imagefolder": "dinotune.data.bundled",
    "make_segmentation_dataset": "dinotune.data.bundled",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'dinotune.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
