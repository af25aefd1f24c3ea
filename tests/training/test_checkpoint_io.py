"""Checkpoints are loaded safely: a crafted one runs no code even when torch is told to unpickle
everything, a damaged `last.ckpt` falls back to the newest intact checkpoint (or fails in one line),
and the temporary files of a killed writer are removed when the next run starts."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from dinotune.atomic import atomic_dir, atomic_path
from dinotune.errors import CheckpointError
from dinotune.training import build_trainer, resume_path
from dinotune.training.checkpoints import load_checkpoint_file
from dinotune.training.trainer import AtomicCheckpointIO
from dinotune.verbs.finetune import run_finetune
from tests.training_fixtures import finetune_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin


class _FirstStep(L.Callback):
    """Records the step training starts from: 0 for a fresh run, the checkpoint's step for a resume."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step


def _resume(digits: Path, run_dir: Path, max_steps: int = 6) -> tuple[int | None, dict]:
    """Continue the run to `max_steps`; (the step it started from, its metrics)."""
    first = _FirstStep()
    result = run_finetune(_config(digits, run_dir, max_steps), resume=True, callbacks=(first,))
    return first.step, result.metrics


def _config(digits: Path, out: Path, max_steps: int):
    trainer = {"max_steps": max_steps, "checkpoint_every_n_steps": 2, "keep_checkpoints": -1, "progress_bar": False}
    return finetune_config(digits, out, trainer=trainer, mode="linear")


@pytest.fixture(scope="module")
def trained(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run: step=0000002.ckpt, step=0000004.ckpt and last.ckpt (step 4)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ckpt") / "run"
    run_finetune(_config(digits, out, 4))
    return out


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, free to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


class _Payload:
    """Unpickling this runs `exec`, which writes the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and type(err.value) is CheckpointError
    return message


def test_real_checkpoints_load_with_weights_only_and_resume(
    run_dir: Path, digits: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    state = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")  # no allowlisted globals needed
    assert state["global_step"] == 4 and state["optimizer_states"] and state["lr_schedulers"]
    start, metrics = _resume(digits, run_dir)
    assert start == 4 and metrics["steps"] == 6 and metrics["resumed"]


def test_crafted_checkpoint_runs_no_code_even_when_torch_is_forced_to_unpickle(
    run_dir: Path, digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.fabric.utilities.cloud_io import _load as lightning_load

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    last = run_dir / "checkpoints" / "last.ckpt"
    crafted = {**torch.load(last, weights_only=True), "payload": _Payload(marker)}
    torch.save(crafted, last)

    with pytest.raises(CheckpointError) as err:  # the resume path chosen by train --resume and pretrain
        resume_path(run_dir)
    assert str(last) in _one_line(err) and "exec" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        run_finetune(_config(digits, run_dir, 6), resume=True)
    assert str(last) in _one_line(err)
    trainer = build_trainer(_config(digits, run_dir, 6).trainer, tmp_path / "other")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    with pytest.raises(CheckpointError) as err:  # the call Lightning's fit(ckpt_path=...) makes
        trainer.strategy.load_checkpoint(last)
    _one_line(err)
    assert not marker.exists()

    lightning_load(last)  # the loader Lightning uses on its own: the payload runs, so the test is real
    assert marker.read_text() == "code ran"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_weight_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40  # inside the tensor records: torch.load alone would not notice
    path.write_bytes(bytes(raw))


def test_damaged_last_ckpt_falls_back_to_the_newest_intact_checkpoint(
    run_dir: Path, digits: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoints = run_dir / "checkpoints"
    _truncate(checkpoints / "last.ckpt")
    _flip_a_weight_byte(checkpoints / "step=0000004.ckpt")
    caplog.set_level(logging.WARNING, logger="dinotune")
    assert resume_path(run_dir) == checkpoints / "step=0000002.ckpt"
    assert resume_path(run_dir) == checkpoints / "step=0000002.ckpt"  # asked twice: checked and warned once
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "last.ckpt" in warning and "step=0000002.ckpt" in warning

    start, metrics = _resume(digits, run_dir)
    assert start == 2 and metrics["steps"] == 6  # from step=0000002.ckpt
    assert load_checkpoint_file(checkpoints / "last.ckpt")["global_step"] == 6


def test_no_intact_checkpoint_is_a_one_line_error(run_dir: Path, digits: Path) -> None:
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        _truncate(path)
    with pytest.raises(CheckpointError) as err:
        resume_path(run_dir)
    assert str(run_dir / "checkpoints") in _one_line(err) and "delete" in str(err.value)
    with pytest.raises(CheckpointError):
        run_finetune(_config(digits, run_dir, 6), resume=True)


def test_temporary_files_of_a_killed_writer_are_removed_at_start(run_dir: Path, digits: Path, die_mid_write) -> None:
    def write(kill) -> None:
        with atomic_dir(run_dir / "best", overwrite=True) as folder:
            (folder / "head.safetensors").write_bytes(b"half an export")
            with atomic_path(run_dir / "checkpoints" / "last.ckpt") as tmp:
                tmp.write_bytes(b"half a checkpoint")
                kill()

    die_mid_write(write)
    (stale_file,) = (run_dir / "checkpoints").glob(".last.ckpt.*.tmp")
    (stale_dir,) = run_dir.glob(".best.*.tmp")
    assert stale_file.stat().st_size > 0 and (stale_dir / "head.safetensors").is_file()

    start, metrics = _resume(digits, run_dir)
    assert start == 4 and metrics["steps"] == 6
    assert not stale_file.exists() and not stale_dir.exists()
    assert not list(run_dir.rglob("*.tmp"))
