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


def test_overwrite_never_deletes_the_inputs(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "probe"
    run.mkdir(parents=True)
    (run / "model.json").write_text("precious")
    for out in (run, tmp_path / "runs", tmp_path):
        with (
            pytest.raises(ConfigError, match="is, or holds, the input"),
            staged_output(out, overwrite=True, keep=[run]),
        ):
            pass
    assert (run / "model.json").read_text() == "precious"


def test_a_new_training_folder_that_fails_before_a_checkpoint_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "train"
    with pytest.raises(ValueError), training_output(out, resume=False, has_checkpoint=False):
        (out / "config.yaml").write_text("x")
        raise ValueError("bad input found after the config was written")
    assert not out.exists()  # the same command can be run again


def test_no_lock_file_is_left_behind(tmp_path: Path) -> None:
    with staged_output(tmp_path / "run") as stage:
        (stage / "x").write_text("x")
        assert (tmp_path / ".run.lock").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
