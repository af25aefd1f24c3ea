"""Deployable models: backbone + head in plain PyTorch (or ONNX Runtime), and the one folder format.

Names load on first use, so the card and the ONNX twins (`dinotune.model.card`, `dinotune.model.onnx`)
import without torch: a slim ONNX server has no torch at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dinotune.model.card import CARD_FILE, TASKS, ModelCard, read_card
    from dinotune.model.classifier import Classifier
    from dinotune.model.io import HEAD_FILE, load_card_backbone, load_model, model_device, plain_copy, save_model
    from dinotune.model.onnx import OnnxClassifier, OnnxSegmenter, load_onnx_model, onnx_session
    from dinotune.model.segmenter import Segmenter, build_segmenter, feature_dims

_PUBLIC: dict[str, tuple[str, ...]] = {  # module -> the public names it defines
    "dinotune.model.card": ("CARD_FILE", "TASKS", "ModelCard", "read_card"),
    "dinotune.model.classifier": ("Classifier",),
    "dinotune.model.io": ("HEAD_FILE", "load_card_backbone", "load_model", "model_device", "plain_copy", "save_model"),
    "dinotune.model.onnx": ("OnnxClassifier", "OnnxSegmenter", "load_onnx_model", "onnx_session"),
    "dinotune.model.segmenter": ("Segmenter", "build_segmenter", "feature_dims"),
}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = [
    "CARD_FILE",
    "HEAD_FILE",
    "TASKS",
    "Classifier",
    "ModelCard",
    "OnnxClassifier",
    "OnnxSegmenter",
    "Segmenter",
    "build_segmenter",
    "feature_dims",
    "load_card_backbone",
    "load_model",
    "load_onnx_model",
    "model_device",
    "onnx_session",
    "plain_copy",
    "read_card",
    "save_model",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dinotune.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value
