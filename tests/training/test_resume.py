"""A run killed (SIGKILL) while writing a mid-epoch checkpoint resumes to the same final weights as an
uninterrupted run, and no checkpoint file is ever torn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinotune.config import validate
from dinotune.errors import ConfigError
from dinotune.verbs.finetune import FinetuneConfig, run_finetune
from tests.training_fixtures import SUBPROCESS_ENV

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin

SCRIPT = Path(__file__).with_name("train_script.py")


def _values(digits: Path, out: Path) -> dict:
    """19 steps per epoch; every source of randomness on: augmentation, mixup, drop path, EMA."""
    return {
        "data": {"root": str(digits), "image_size": 16, "num_workers": 0, "augment": "default", "hflip": False},
        "backbone": {"source": "random:vit_test16"},
        "batch_size": 64,
        "optim": {"lr": 1e-3, "head_lr": 1e-3, "warmup": 0.1},
        "regularization": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "drop_path_rate": 0.1, "ema_decay": 0.9},
        "trainer": {"max_steps": 30, "checkpoint_every_n_steps": 4, "deterministic": True, "progress_bar": False},
        "out": str(out),
    }


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 30
    return ckpt["state_dict"]


@pytest.fixture
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(
    digits: Path, tmp_path: Path, _restore_determinism: None
) -> None:
    reference = run_finetune(validate(FinetuneConfig, _values(digits, tmp_path / "reference")))
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(_values(digits, killed)), "--kill-while-saving-step", "24"],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    checkpoints = killed / "checkpoints"
    assert list(checkpoints.glob(".*.tmp")), "the kill should have hit a checkpoint write"
    for path in checkpoints.glob("*.ckpt"):  # every visible checkpoint is complete
        assert torch.load(path, map_location="cpu", weights_only=False)["global_step"] <= 20, path
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 20  # mid-epoch 2 (19/epoch)

    with pytest.raises(ConfigError, match="--resume"):
        run_finetune(validate(FinetuneConfig, _values(digits, killed)))
    resumed = run_finetune(validate(FinetuneConfig, _values(digits, killed)), resume=True)
    assert resumed.metrics["resumed"] is True
    expected, got = _weights(reference.run_dir), _weights(killed)
    assert expected.keys() == got.keys() and any(k.startswith("ema.") for k in got)
    worst = max((expected[k].float() - got[k].float()).abs().max().item() for k in expected)
    assert worst <= 1e-6, worst
    assert resumed.metrics["test"]["accuracy"] == pytest.approx(reference.metrics["test"]["accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    ("kill", "last_step"),
    [
        (["--kill-after-step", "22"], 20),
        (["--kill-in-validation-epoch", "0"], 19),
        (["--kill-while-saving-step", "24"], 20),
    ],
    ids=["mid-epoch", "during-validation", "during-checkpoint-write"],
)
def test_resume_with_two_dataloader_workers_matches_the_uninterrupted_run(
    digits: Path, tmp_path: Path, _restore_determinism: None, kill: list[str], last_step: int
) -> None:
    """The loader's position is in the checkpoint and restored before the resumed epoch's iterator exists,
    so prefetching workers replay nothing and skip nothing; the reference runs without workers."""
    reference = run_finetune(validate(FinetuneConfig, _values(digits, tmp_path / "reference")))
    values = _values(digits, tmp_path / "killed")
    values["data"] = {**values["data"], "num_workers": 2}
    proc = subprocess.run([sys.executable, str(SCRIPT), json.dumps(values), *kill], env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=False)["global_step"] == last_step
    run_finetune(validate(FinetuneConfig, values), resume=True)
    expected, got = _weights(reference.run_dir), _weights(tmp_path / "killed")
    worst = max((expected[k].float() - got[k].float()).abs().max().item() for k in expected)
    assert worst <= 1e-6, worst
