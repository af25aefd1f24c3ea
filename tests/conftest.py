"""Shared test set-up: no network, reproducible seeds, and the golden fixtures from ../shared."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download at test time
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Caches (features, dense maps, ONNX graphs, volume slices) go to a fresh folder, never the user's ~/.cache.
os.environ["DINOTUNE_HOME"] = tempfile.mkdtemp(prefix="dinotune-tests-")
atexit.register(shutil.rmtree, os.environ["DINOTUNE_HOME"], ignore_errors=True)

pytest_plugins = [
    "tests.training_fixtures",  # finetune_config, segment_config, digits, finetuned, seg_root, ...
    "tests.detection_fixtures",  # shapes_coco (+ make_shapes_dataset, perfect_predictions, ...)
    "tests.detection_training",  # detect_config, shapes64, detect_run (a trained detector), detect_export
]

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "dinov3_reference"
FIXTURE_NAMES = ["vits16_style_depth3", "vithplus_style_depth2", "convnext_tiny_style"]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The golden DINOv3 fixtures; under CI they must exist, so a missing folder fails, not skips."""
    if not FIXTURES.is_dir():
        message = f"golden fixtures not found at {FIXTURES} (expected ../shared beside the repo)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return FIXTURES


@pytest.fixture(autouse=True)
def _quiet_random_weight_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
        yield


@pytest.fixture
def one_torch_thread():
    """Training tests run with one torch thread: on 2 shared cores, more threads only spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _die_mid_write(write: Callable[[Callable[[], None]], None]) -> None:
    """Run `write(kill)` in a forked child that SIGKILLs itself when it calls `kill()` (a power cut in the
    middle of a write); a fork costs milliseconds, where a fresh interpreter importing dinotune costs seconds."""
    pid = os.fork()
    if pid == 0:
        try:
            write(lambda: os.kill(os.getpid(), signal.SIGKILL))
        finally:
            os._exit(1)  # reached only if `write` never called kill(): the parent's assertion fails
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the writer should have been killed"


@pytest.fixture
def die_mid_write() -> Callable[[Callable[[Callable[[], None]], None]], None]:
    """`die_mid_write(lambda kill: ...)`: a writer killed by SIGKILL, leaving whatever it had written."""
    return _die_mid_write
