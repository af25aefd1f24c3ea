"""dinotune: turn DINOv3 foundation models into the best model for your own images.

The public API is the verbs (one per CLI command, each returning a `Result` with `run_dir` and
`metrics`) and the loaders of what they write. They load on first use: `import dinotune` and the
CLI's `--help` take about a second instead of importing torch, Lightning and ONNX Runtime up front
(measured: 1.0 s vs 6.7 s on the CI machine). The imports under `TYPE_CHECKING` spell out where every
name lives, for readers, IDEs and type checkers; a test checks that they and `_PUBLIC` agree.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dinotune.version import __version__

if TYPE_CHECKING:
    from dinotune.backbones import load_backbone
    from dinotune.errors import DinotuneError
    from dinotune.model import load_model
    from dinotune.verbs.common import Result
    from dinotune.verbs.compare import run_compare
    from dinotune.verbs.convert import convert_checkpoint
    from dinotune.verbs.embed import embed, run_embed
    from dinotune.verbs.evaluate import run_evaluate
    from dinotune.verbs.export import run_export
    from dinotune.verbs.finetune import FinetuneConfig, run_finetune
    from dinotune.verbs.predict import predict, run_predict
    from dinotune.verbs.pretrain import PretrainConfig, run_pretrain
    from dinotune.verbs.probe import ProbeConfig, probe, run_probe
    from dinotune.verbs.quickstart import quickstart
    from dinotune.verbs.segment import SegmentConfig, run_segment

_PUBLIC: dict[str, tuple[str, ...]] = {  # module -> the public names it defines
    "dinotune.backbones": ("load_backbone",),
    "dinotune.errors": ("DinotuneError",),
    "dinotune.model": ("load_model",),
    "dinotune.verbs.common": ("Result",),
    "dinotune.verbs.compare": ("run_compare",),
    "dinotune.verbs.convert": ("convert_checkpoint",),
    "dinotune.verbs.embed": ("embed", "run_embed"),
    "dinotune.verbs.evaluate": ("run_evaluate",),
    "dinotune.verbs.export": ("run_export",),
    "dinotune.verbs.finetune": ("FinetuneConfig", "run_finetune"),
    "dinotune.verbs.predict": ("predict", "run_predict"),
    "dinotune.verbs.pretrain": ("PretrainConfig", "run_pretrain"),
    "dinotune.verbs.probe": ("ProbeConfig", "probe", "run_probe"),
    "dinotune.verbs.quickstart": ("quickstart",),
    "dinotune.verbs.segment": ("SegmentConfig", "run_segment"),
}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = [
    "DinotuneError",
    "FinetuneConfig",
    "PretrainConfig",
    "ProbeConfig",
    "Result",
    "SegmentConfig",
    "__version__",
    "convert_checkpoint",
    "embed",
    "load_backbone",
    "load_model",
    "predict",
    "probe",
    "quickstart",
    "run_compare",
    "run_embed",
    "run_evaluate",
    "run_export",
    "run_finetune",
    "run_predict",
    "run_pretrain",
    "run_probe",
    "run_segment",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dinotune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value
