"""Training fixtures shared by the tests of `training/`, `verbs/`, `tasks/` and `backbones/`: tiny, fast
settings on generated data (digits at 16 px, digit masks at 64 px) and trained runs shared per session.
Registered in tests/conftest.py (`pytest_plugins`); helpers are imported from here by name."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from dinotune.config import validate
from dinotune.data.bundled import digits_imagefolder, make_segmentation_dataset
from dinotune.verbs.common import Result
from dinotune.verbs.finetune import FinetuneConfig, run_finetune
from dinotune.verbs.segment import SegmentConfig, run_segment

SUBPROCESS_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONWARNINGS": "ignore",
}


def finetune_config(root: Path, out: Path, **overrides: Any) -> FinetuneConfig:
    """Tiny, fast settings on digits; `overrides` replace whole top-level sections or values."""
    values: dict[str, Any] = {
        "data": {"root": str(root), "image_size": 16, "num_workers": 0, "augment": "none"},
        "backbone": {"source": "random:vit_test16"},
        "mode": "finetune",
        "batch_size": 32,
        "optim": {"lr": 1e-3, "head_lr": 1e-3, "layer_decay": 1.0},
        "trainer": {"max_epochs": 5, "progress_bar": False},
        "out": str(out),
    }
    values.update(overrides)
    return validate(FinetuneConfig, values)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_imagefolder(tmp_path_factory.mktemp("data") / "digits", size=16)


@pytest.fixture(scope="session")
def finetuned(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Result:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("finetune") / "run"
    shutil.rmtree(out, ignore_errors=True)
    return run_finetune(finetune_config(digits, out))


def segment_config(root: Path, out: Path, **overrides: Any) -> SegmentConfig:
    """Tiny, fast settings on the digit masks; `overrides` replace whole top-level sections or values."""
    values: dict[str, Any] = {
        "data": {"root": str(root), "image_size": 64, "num_workers": 0, "augment": "none"},
        "backbone": {"source": "random:vit_test16"},
        "batch_size": 16,
        "optim": {"head_lr": 3e-3, "warmup": 0.0},
        "trainer": {"max_epochs": 8, "progress_bar": False},
        "out": str(out),
    }
    values.update(overrides)
    return validate(SegmentConfig, values)


@pytest.fixture(scope="session")
def seg_root(tmp_path_factory) -> Path:
    return make_segmentation_dataset(tmp_path_factory.mktemp("segdata") / "digits", 80, size=64)


def _run(root: Path, out: Path, **overrides: Any) -> Result:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run_segment(segment_config(root, out, **overrides))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def linear_run(seg_root: Path, tmp_path_factory) -> Result:
    return _run(seg_root, tmp_path_factory.mktemp("seg") / "linear", head={"type": "linear"})


@pytest.fixture(scope="session")
def decoder_run(seg_root: Path, tmp_path_factory) -> Result:
    return _run(
        seg_root,
        tmp_path_factory.mktemp("seg") / "decoder",
        head={"type": "decoder", "width": 64},
        trainer={"max_epochs": 12, "progress_bar": False},
    )
