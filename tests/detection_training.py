"""Detection training fixtures: the small-data CPU recipe on generated shapes, one trained detector and
its ONNX export shared per session (tests of verbs/, export/ and serve/). Registered in tests/conftest.py."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from dinotune.config import validate
from dinotune.verbs.common import Result
from dinotune.verbs.detect import DetectConfig, run_detect
from tests.detection_fixtures import make_shapes_dataset


def detect_config(root: Path, out: Path, **overrides: Any) -> DetectConfig:
    """The small-data CPU recipe: 64 px, strides 4/8/16 from the ViT's stride-16 map, a 32-channel head."""
    values: dict[str, Any] = {
        "data": {"root": str(root), "image_size": 64, "num_workers": 0, "augment": "none"},
        "backbone": {"source": "random:vit_test16"},
        "mode": "linear",
        "head": {"strides": [4, 8, 16], "width": 32},
        "loss": {"range_factor": 2.0},
        "batch_size": 8,
        "optim": {"head_lr": 5e-3, "warmup": 0.0},
        "trainer": {"max_epochs": 12, "progress_bar": False},
        "out": str(out),
    }
    values.update(overrides)
    return validate(DetectConfig, values)


def train(root: Path, out: Path, resume: bool = False, callbacks: tuple = (), **overrides: Any) -> Result:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_detect(detect_config(root, out, **overrides), resume=resume, callbacks=callbacks)


@pytest.fixture(scope="session")
def shapes64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "coco64", 48, 16, 16, size=64)


@pytest.fixture(scope="session")
def detect_run(shapes64: Path, tmp_path_factory: pytest.TempPathFactory) -> Result:
    torch.set_num_threads(1)
    return train(shapes64, tmp_path_factory.mktemp("detect") / "run")


@pytest.fixture(scope="session")
def detect_export(detect_run: Result) -> Path:
    """The trained detector exported to ONNX (fp32), verified against PyTorch on its validation images."""
    from dinotune.export.onnx import export_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_model(detect_run.run_dir, detect_run.run_dir / "export", timing_repeats=1)
    return detect_run.run_dir / "export"
