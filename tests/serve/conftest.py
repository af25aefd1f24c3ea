"""Fixtures of the serving tests (helpers live in tests/serve/helpers.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tests.serve.helpers import make_model_folder


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
        return make_model_folder(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp32 ONNX export of a run folder named `cats` (its own copy: tests may read its card)."""
    from dinotune.export.onnx import export_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
        run = make_model_folder(tmp_path_factory.mktemp("serve-onnx") / "cats")
        export_model(run, run / "export", timing_repeats=1)
    return run / "export"
