"""dinotune: turn DINOv3 foundation models into the best model for your own images.

The public API is the verbs (one per CLI command, each returning a `Result` with `run_dir` and
`metrics`) and the loaders of what they write.
"""

from __future__ import annotations

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
from dinotune.version import __version__

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
