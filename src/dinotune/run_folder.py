"""Output folders: one rule for every verb, so a run is never silently overwritten or mixed.

- An existing non-empty output folder is refused with one line naming it and the flag that allows it:
  `--resume` for training verbs (continue the run exactly), `--overwrite` elsewhere (replace it).
- Verbs that are not resumable write into a staging folder beside the target, renamed into place only
  when everything succeeded: the folder is complete (new) or untouched (old), never half of each.
- A lock file beside the folder refuses a second writer while one runs (released when the process
  ends, even when it is killed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from dinotune.atomic import atomic_dir, make_dirs, remove_stale_temps, write_text
from dinotune.errors import ConfigError

log = logging.getLogger("dinotune")


def new_run_dir(kind: str, root: str | Path = "runs") -> Path:
    """`runs/<kind>-<YYYYmmdd-HHMMSS>`, made unique if two runs start in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{kind}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(root) / f"{kind}-{stamp}-{suffix}"
    return path


def is_nonempty(folder: Path) -> bool:
    return (folder.is_dir() and any(folder.iterdir())) or folder.is_file()


@contextlib.contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside `folder` for the block; a second writer fails at once. The lock file is
    removed when the block ends (a writer that opened it just before checks it still holds the live file)."""
    make_dirs(folder.parent)
    lock_path = folder.parent / f".{folder.name}.lock"
    while True:
        handle = open(lock_path, "a+")  # noqa: SIM115  # held for the whole block
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(
                f"'{folder}' is being written by another dinotune process; wait for it or choose another output folder."
            ) from None
        try:
            live = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            live = False
        if live:
            break
        handle.close()  # the previous holder removed it between our open and our lock: take the new file
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


@contextlib.contextmanager
def staged_output(folder: str | Path, *, overwrite: bool = False, keep: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield a staging folder that replaces `folder` when the block succeeds (`--overwrite` verbs).

    `keep`: what the verb reads (its run, its data); an output folder that is one of them, or holds one,
    is refused, so `--overwrite` can never delete the inputs.
    """
    folder = Path(folder)
    for source in keep:
        if Path(source).resolve().is_relative_to(folder.resolve()):
            raise ConfigError(
                f"the output folder '{folder}' is, or holds, the input '{source}'; choose another "
                "output folder (e.g. inside the run: RUN/evaluation, RUN/export)."
            )
    with writer_lock(folder):
        if is_nonempty(folder) and not overwrite:
            raise ConfigError(
                f"'{folder}' already exists and is not empty; pass --overwrite to replace it, or "
                "choose another output folder."
            )
        remove_stale_temps(folder.parent, target=folder.name)  # the staging folder of a killed earlier run
        with atomic_dir(folder, overwrite=True) as tmp:
            yield tmp


@contextlib.contextmanager
def training_output(folder: str | Path, *, resume: bool, has_checkpoint: bool) -> Iterator[Path]:
    """The run folder of a training verb, locked for the block: refused when it already holds files,
    unless `--resume`; with `--resume`, it must hold a checkpoint to continue from. A new folder that
    fails before its first checkpoint (bad input) is removed, so the same command can simply be re-run."""
    folder = Path(folder)
    if _rank() > 0:  # DDP: rank 0 checks, locks and creates the folder; the other ranks wait for it, then write
        _wait_for(folder)
        yield folder
        return
    with writer_lock(folder):
        if resume and not has_checkpoint:
            raise ConfigError(
                f"--resume: '{folder}' holds no checkpoint to continue from; run without --resume to start it."
            )
        if not resume and is_nonempty(folder):
            hint = "pass --resume to continue it" if has_checkpoint else "it is not a resumable run"
            raise ConfigError(f"'{folder}' already exists and is not empty ({hint}); or choose another out.")
        new = not folder.exists()
        make_dirs(folder)  # readable by a server running as another user, whatever the umask
        try:
            yield folder
        except BaseException:
            if new and not any((folder / "checkpoints").glob("*.ckpt")):
                shutil.rmtree(folder, ignore_errors=True)  # nothing worth keeping: let the retry start clean
            raise


def _wait_for(folder: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not folder.is_dir():
        if time.monotonic() > deadline:
            raise ConfigError(f"rank 0 did not create '{folder}' within {timeout_s:.0f} s (see its error).")
        time.sleep(0.1)


def _rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def recorded_data_root(run: str | Path) -> Path | None:
    """The dataset a run was trained on: its splits.json's root, else its config.yaml's data.root."""
    run = Path(run)
    try:
        return Path(json.loads((run / "splits.json").read_text())["root"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def recorded_mode(run: str | Path) -> str | None:
    """How a training run treated its backbone (config.yaml's `mode`: linear, finetune, ...), if it says."""
    try:
        mode = yaml.safe_load((Path(run) / "config.yaml").read_text()).get("mode")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return mode if isinstance(mode, str) else None


class RunLog:
    """Messages go to the console (through logging) and to `<run>/log.txt`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = self.run_dir / "log.txt"

    def _write(self, level: str, message: str) -> None:
        with open(self._file, "a") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {level} {message}\n")

    def info(self, message: str) -> None:
        log.info(message)
        self._write("INFO", message)

    def warn(self, message: str) -> None:
        log.warning(message)
        self._write("WARNING", message)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str))
