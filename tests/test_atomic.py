"""Temporary files of killed atomic writers are found and removed; live writers' files are kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dinotune.atomic import atomic_dir, atomic_path, remove_stale_temps
from dinotune.run_folder import staged_output


def test_temp_of_a_killed_writer_is_removed_and_a_live_one_kept(tmp_path: Path, die_mid_write) -> None:
    def write(kill) -> None:
        with atomic_path(tmp_path / "last.ckpt") as tmp:
            tmp.write_bytes(b"half a checkpoint")
            kill()

    die_mid_write(write)
    (stale,) = tmp_path.glob(".last.ckpt.*.tmp")
    foreign_old = tmp_path / ".old.ckpt.k3j2h1.tmp"  # an earlier naming, no pid: removed by age only
    foreign_new = tmp_path / ".new.ckpt.x8y7z6.tmp"
    for path in (foreign_old, foreign_new):
        path.write_bytes(b"x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(foreign_old, (day_ago, day_ago))

    with atomic_path(tmp_path / "other.ckpt") as live:  # this process is writing it right now
        live.write_bytes(b"in progress")
        removed = remove_stale_temps(tmp_path)
        assert live.exists()
    assert sorted(removed) == sorted([stale, foreign_old])
    assert not stale.exists() and not foreign_old.exists() and foreign_new.exists()
    assert not (tmp_path / "last.ckpt").exists() and (tmp_path / "other.ckpt").read_bytes() == b"in progress"


def test_temp_folder_of_a_killed_writer_is_removed(tmp_path: Path, die_mid_write) -> None:
    def write(kill) -> None:
        with atomic_dir(tmp_path / "best") as folder:
            (folder / "head.safetensors").write_bytes(b"half an export")
            kill()

    die_mid_write(write)
    (stale,) = tmp_path.glob(".best.*.tmp")
    assert (stale / "head.safetensors").is_file()
    assert remove_stale_temps(tmp_path) == [stale] and not stale.exists()


def test_staging_folder_of_a_killed_run_is_removed_when_that_folder_is_written_again(
    tmp_path: Path, die_mid_write
) -> None:
    for name in ("probe-a", "probe-b"):  # a killed probe / evaluate / export leaves its staging folder

        def write(kill, name: str = name) -> None:
            with staged_output(tmp_path / name) as stage:
                (stage / "sweep.csv").write_text("half")
                kill()

        die_mid_write(write)
    (stale_a,) = tmp_path.glob(".probe-a.*.tmp")
    (stale_b,) = tmp_path.glob(".probe-b.*.tmp")
    with staged_output(tmp_path / "probe-a") as stage:
        (stage / "sweep.csv").write_text("done")
    assert not stale_a.exists() and (tmp_path / "probe-a" / "sweep.csv").read_text() == "done"
    assert stale_b.is_dir()  # another folder's leftovers wait for that folder's next run
