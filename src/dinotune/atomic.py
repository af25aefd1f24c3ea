"""Atomic file and folder writes: a crash leaves the old file or the new one, never a torn one.

A writer killed mid-write (SIGKILL, power cut) leaves its temporary file or folder
`.<name>.<host>.<pid>.<random>.tmp` beside the target; `remove_stale_temps` deletes those whose writer
is gone, so they do not pile up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`, renamed to `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _normal_permissions(tmp)
        if target.exists() and overwrite:
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _normal_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 and some writers (safetensors, mkstemp) 0600: give everything the umask's
    permissions, so a server running as another user can read what a training run wrote."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process may be writing it right now, from another thread
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temps(
    folder: str | os.PathLike, max_age_s: float = 24 * 3600, target: str | None = None
) -> list[Path]:
    """Delete temporary files and folders of `atomic_path` / `atomic_dir` writers that died; returns them.

    A temp file is stale when its writer's process no longer exists on this host, or, for files written on
    another host (a shared file system) or before writers named themselves, when untouched for `max_age_s`.
    `target`: only the temps of that file or folder name.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.glob(".*.tmp"):
        match = _TEMP.match(path.name)
        if target is not None and (match is None or match["target"] != target):
            continue
        try:
            if match and match["host"] == _HOST:
                stale = not _alive(int(match["pid"]))
            else:
                stale = now - path.stat().st_mtime > max_age_s
            if stale and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif stale:
                path.unlink()
            if stale:
                removed.append(path)
        except OSError:
            continue  # vanished meanwhile (its writer finished) or not ours to delete
    if removed:
        log.info("removed %d temporary file(s) left in %s by killed writers", len(removed), folder)
    return removed
