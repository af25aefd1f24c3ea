"""Two processes under torchrun (DDP, gloo on CPU) reach the weights of one process with the same global
batch: the sampler shards each global batch across ranks and DDP averages the gradients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training_fixtures import SUBPROCESS_ENV

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin

SCRIPT = Path(__file__).with_name("train_script.py")


def _values(digits: Path, out: Path, devices: int) -> dict:
    return {
        "data": {"root": str(digits), "image_size": 16, "num_workers": 0, "augment": "default", "hflip": False},
        "backbone": {"source": "random:vit_test16"},
        "batch_size": 64 // devices,
        "optim": {"lr": 1e-3, "head_lr": 1e-3},
        "trainer": {
            "max_steps": 8,
            "accelerator": "cpu",
            "devices": devices,
            "strategy": "ddp" if devices > 1 else "auto",
            "progress_bar": False,
        },
        "save_last_model": False,
        "out": str(out),
    }


def test_two_process_ddp_matches_one_process(digits: Path, tmp_path: Path) -> None:
    single = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(_values(digits, tmp_path / "one", 1))],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            str(SCRIPT),
            json.dumps(_values(digits, tmp_path / "two", 2)),
        ],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False) for run in ("one", "two")]
    assert weights[0]["global_step"] == weights[1]["global_step"] == 8
    one, two = weights[0]["state_dict"], weights[1]["state_dict"]
    worst = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    print(f"max |w_1proc - w_2proc| after 8 steps: {worst:.3g}")
    assert worst < 1e-4
