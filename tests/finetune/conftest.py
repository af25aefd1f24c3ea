"""Fine-tuning tests: one thread per process (2 shared cores: oversubscribed BLAS threads run 30x slower),
the digits at 16 px, and one small fine-tuning run shared by the tests that need a trained model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from dinotune.config import validate
from dinotune.data.bundled import digits_imagefolder
from dinotune.verbs.common import Result
from dinotune.verbs.finetune import FinetuneConfig, run_finetune

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                  "PYTHONWARNINGS": "ignore"}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def finetune_config(root: Path, out: Path, **overrides: Any) -> FinetuneConfig:
    """Tiny, fast settings on digits; `overrides` replace whole top-level sections or values."""
    values: dict[str, Any] = {
        "data": {"root": str(root), "image_size": 16, "num_workers": 0, "augment": "none"},
        "backbone": {"source": "random:vit_test16"}, "mode": "finetune", "batch_size": 32,
        "optim": {"lr": 1e-3, "head_lr": 1e-3, "layer_decay": 1.0},
        "trainer": {"max_epochs": 5, "progress_bar": False}, "out": str(out),
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
