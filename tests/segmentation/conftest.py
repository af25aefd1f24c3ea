"""Segmentation tests: one thread (2 shared cores), the bundled digit-mask dataset, and one linear and one
decoder run shared by the tests that need a trained model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from dinotune.config import validate
from dinotune.data.bundled import make_segmentation_dataset
from dinotune.verbs.common import Result
from dinotune.verbs.segment import SegmentConfig, run_segment


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def segment_config(root: Path, out: Path, **overrides: Any) -> SegmentConfig:
    """Tiny, fast settings on the digit masks; `overrides` replace whole top-level sections or values."""
    values: dict[str, Any] = {
        "data": {"root": str(root), "image_size": 64, "num_workers": 0, "augment": "none"},
        "backbone": {"source": "random:vit_test16"}, "batch_size": 16,
        "optim": {"head_lr": 3e-3, "warmup": 0.0}, "trainer": {"max_epochs": 8, "progress_bar": False},
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
    return _run(seg_root, tmp_path_factory.mktemp("seg") / "decoder", head={"type": "decoder", "width": 64},
                trainer={"max_epochs": 12, "progress_bar": False})
