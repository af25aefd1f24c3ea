"""Run folders: where every verb writes its outputs, with a log file a person can read afterwards."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from dinotune.atomic import write_text

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


def training_run_dir(out: str | Path | None, kind: str, resume: bool) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume from): never silently trains over an existing run."""
    from dinotune.errors import ConfigError
    from dinotune.training import resume_path

    if resume and out is None:
        raise ConfigError("--resume needs the run folder: set out=<the run folder to continue>.")
    run_dir = Path(out or new_run_dir(kind))
    ckpt = resume_path(run_dir)
    if ckpt is not None and not resume:
        raise ConfigError(f"'{run_dir}' already holds a training run; pass --resume to continue it, or choose "
                          "another out.")
    return run_dir, ckpt


def load_training_backbone(backbone_cfg: Any, channels: int, seed: int) -> Any:
    """The backbone a training config names, on the CPU (Lightning moves it), checked against data.channels."""
    from dinotune.backbones import load_backbone
    from dinotune.errors import ConfigError

    backbone = load_backbone(backbone_cfg.source, arch=backbone_cfg.arch, in_chans=backbone_cfg.in_chans,
                             device="cpu", seed=seed)
    if channels != backbone.info.in_chans:
        raise ConfigError(f"data.channels={channels} but backbone.in_chans={backbone.info.in_chans}; "
                          "make them equal.")
    return backbone
