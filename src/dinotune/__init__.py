"""dinotune: turn DINOv3 foundation models into the best model for your own images.

The public API is a short list of verbs; each is imported on first use so that `import dinotune`
stays fast and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_backbone": "dinotune.backbones.load",
    "convert_checkpoint": "dinotune.backbones.convert",
    "embed": "dinotune.features.embed",
    "DinotuneError": "dinotune.errors",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'dinotune' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
