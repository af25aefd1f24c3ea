"""Loading training checkpoints safely, and choosing which one to resume from.

Lightning (2.6) loads `ckpt_path` with `torch.load(weights_only=None)`: torch's default decides, and
`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` (or an old torch) turns it into a full unpickle, which runs whatever
code a crafted file names. Here every load passes `weights_only=True` explicitly, which that variable
cannot override. dinotune's checkpoints need no extra allowlisting: they hold tensors, numbers, strings,
lists and dicts only (optimizer and LambdaLR states, loop counters, plain callback states; no
hyperparameters are saved). Every resume test (fine-tuning, pretraining, segmentation) loads through
here, so a checkpoint needing more would fail them.

A checkpoint is torch's zip archive with a CRC-32 per record, but `torch.load` does not check those
CRCs, so a bit flip in the weights loads silently. `checkpoint_problem` reads every record against its
CRC (one sequential read) before a resume uses the file; `choose_checkpoint` falls back from a damaged
`last.ckpt` to the newest intact periodic checkpoint.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from dinotune.errors import CheckpointError

log = logging.getLogger("dinotune")
_UNSAFE = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _reason(err: BaseException) -> str:
    """The first line of an error, without torch's long advice."""
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _unsafe(path: str | Path, err: pickle.UnpicklingError) -> CheckpointError | None:
    """The error for a checkpoint naming a global weights_only refuses (crafted, or not ours), else None."""
    unsafe = _UNSAFE.search(str(err))
    if unsafe is None:
        return None
    return CheckpointError(
        f"'{path}' holds an object that is not a tensor or plain value ({unsafe.group(1)}), so it was not "
        "loaded: dinotune did not write it, or it was altered. Delete it to resume from the newest other "
        "checkpoint in its folder, or restore it from a backup."
    )


def load_checkpoint_file(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """`torch.load(..., weights_only=True)`: tensors and plain values only, never code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        unsafe = _unsafe(path, err) if isinstance(err, pickle.UnpicklingError) else None
        raise unsafe or CheckpointError(
            f"'{path}' is damaged or not a checkpoint ({_reason(err)}); delete it to resume from the newest "
            "other checkpoint in its folder."
        ) from None


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from (torn, bit-flipped, not a checkpoint), or None if it can.

    Raises CheckpointError for an intact file that names code to run: that is refused, not skipped.
    The unpickling check is memory-mapped (no tensor data is read) and also guards loaders that bypass
    the CheckpointIO (Lightning's FSDP strategy unpickles a full checkpoint itself): a file that passes
    names only the globals weights_only allows.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every record and checks its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"not a complete checkpoint: {_reason(err)}"
    if bad:
        return f"record {bad} fails its CRC check"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe(path, err)
        if unsafe is not None:
            raise unsafe from None
        return f"unreadable: {_reason(err)}"
    except (RuntimeError, EOFError, ValueError) as err:
        return f"unreadable: {_reason(err)}"
    return None


def _stat_key(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


_chosen: dict[tuple, Path] = {}  # the last choice, keyed by every candidate's path and stat


def _step(path: Path) -> int:
    match = re.search(r"step=(\d+)", path.name)
    return int(match.group(1)) if match else -1


def choose_checkpoint(folder: Path, last_name: str) -> Path | None:
    """The checkpoint to resume from: `last_name` if intact, else the newest intact `step=*.ckpt` (with a
    warning); None if the folder holds none; CheckpointError (one line) if none is intact."""
    last = folder / last_name
    periodic = sorted(folder.glob("step=*.ckpt"), key=_step, reverse=True)
    candidates = ([last] if last.is_file() else []) + periodic
    if not candidates:
        return None
    key = tuple((str(p), *_stat_key(p)) for p in candidates)
    if key in _chosen:  # a verb may ask twice (refuse-or-resume, then resume): read the files once
        return _chosen[key]
    problems: list[str] = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            _chosen.clear()
            _chosen[key] = path
            if problems:
                log.warning(
                    "checkpoint %s: %s; resuming from %s instead (training after it is repeated)",
                    candidates[0],
                    problems[0],
                    path.name,
                )
            return path
        problems.append(problem)
    raise CheckpointError(
        f"No intact checkpoint in '{folder}' ({candidates[0].name}: {problems[0]}); delete that "
        "folder to start the run over, or restore a checkpoint from a backup."
    )
