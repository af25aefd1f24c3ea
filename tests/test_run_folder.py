"""The output-folder rule: refused unless --resume / --overwrite, written whole or not at all, one writer."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from dinotune.errors import ConfigError
from dinotune.run_folder import staged_output, training_output, writer_lock


def test_an_existing_folder_is_refused_then_replaced_whole_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_output(out) as stage:
        (stage / "model.json").write_text("old")
        (stage / "evaluation").mkdir()
        (stage / "evaluation" / "metrics.json").write_text("old")
    with pytest.raises(ConfigError, match="--overwrite"), staged_output(out):
        pass
    with staged_output(out, overwrite=True) as stage:
        (stage / "model.json").write_text("new")
    assert (out / "model.json").read_text() == "new" and not (out / "evaluation").exists()  # nothing stale left


def test_a_failure_leaves_the_old_folder_untouched(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_output(out) as stage:
        (stage / "model.json").write_text("old")
    with pytest.raises(RuntimeError), staged_output(out, overwrite=True) as stage:
        (stage / "model.json").write_text("half")
        raise RuntimeError("killed mid-way")
    assert (out / "model.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["run"]  # no staging left


def test_training_folders_need_resume_and_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "train"
    with training_output(out, resume=False, has_checkpoint=False):
        (out / "config.yaml").write_text("x")
    with pytest.raises(ConfigError, match="pass --resume"), training_output(out, resume=False, has_checkpoint=True):
        pass
    with (
        pytest.raises(ConfigError, match="holds no checkpoint"),
        training_output(out, resume=True, has_checkpoint=False),
    ):
        pass
    with training_output(out, resume=True, has_checkpoint=True) as folder:
        assert folder == out


def _hold(folder: str, seconds: float) -> None:
    with writer_lock(Path(folder)):
        time.sleep(seconds)


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    other = multiprocessing.get_context("fork").Process(target=_hold, args=(str(out), 3.0))
    other.start()
    try:
        time.sleep(0.5)
        with pytest.raises(ConfigError, match="being written by another dinotune process"), staged_output(out):
            pass
    finally:
        other.join()
    with staged_output(out) as stage:  # the lock went with the process
        (stage / "x").write_text("x")
