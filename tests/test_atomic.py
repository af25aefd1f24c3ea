"""Temporary files of killed atomic writers are found and removed; live writers' files are kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dinotune.atomic import atomic_path, remove_stale_temps

KILLED_WRITER = """
import os, signal, sys
from dinotune.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temp_of_a_killed_writer_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], env=env, timeout=60)
    assert proc.returncode == -9
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
    assert not target.exists() and (tmp_path / "other.ckpt").read_bytes() == b"in progress"
