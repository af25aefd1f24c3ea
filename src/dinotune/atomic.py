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


def published_mode(is_dir: bool) -> int:
    """The mode of what dinotune publishes: the umask's, plus read (and, for folders, search) for everyone.

    A server often runs as another user (a container's uid 10001) and must read what a training run wrote,
    whatever the writer's umask (027, 077) or the library's own mode (safetensors and mkstemp write 0600).
    Keep runs private by restricting a folder above them (`chmod 700 runs`), not the files inside.
    """
    if is_dir:
        return (0o777 & ~_umask()) | 0o755
    return (0o666 & ~_umask()) | 0o644


def make_dirs(path: str | os.PathLike) -> Path:
    """`mkdir -p` whose new folders get `published_mode` (existing folders are left as they are)."""
    folder = Path(path)
    new, above = [], folder
    while not above.exists():
        new.append(above)
        above = above.parent
    folder.mkdir(parents=True, exist_ok=True)
    for created in new:
        with contextlib.suppress(OSError):  # made meanwhile by another user's process: theirs to set
            os.chmod(created, published_mode(is_dir=True))
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    target = Path(path)
    make_dirs(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, published_mode(is_dir=False))  # mkstemp makes 0600
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`, renamed to `path` only if the block succeeds."""
    target = Path(path)
    make_dirs(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _publish_permissions(tmp)
        if target.exists() and overwrite:
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 and some writers (safetensors' `save_file`, `save_pretrained`) 0600: give the folder
    and everything in it `published_mode`, so a server running as another user can read them."""
    os.chmod(folder, published_mode(is_dir=True))
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, published_mode(is_dir=path.is_dir()))


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
