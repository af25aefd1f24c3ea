"""How the `dinotune` process runs a command line: global flags anywhere, user errors as one line (exit 2),
a full disk as one line, and Ctrl-C as what was kept plus the exact command that continues (exit 130)."""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
from collections.abc import Callable
from typing import Any

import typer

from dinotune.errors import DinotuneError

GLOBAL_FLAGS = ("--verbose", "-v", "--quiet", "-q")  # accepted anywhere on the command line
RESUMABLE = ("train", "pretrain")  # continue with --resume
CACHED = ("probe", "knn", "embed", "quickstart")  # the same command reuses the features cached so far


def hoist_global_flags(argv: list[str]) -> list[str]:
    """`dinotune probe DATA --verbose` means `dinotune --verbose probe DATA` (words after `--` stay put)."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]


def interrupted_message(argv: list[str]) -> str:
    """What Ctrl-C kept, and the exact command that continues (shell-quoted, ready to paste)."""
    words = [a for a in argv if a not in GLOBAL_FLAGS]
    command = words[0] if words else ""
    if command in RESUMABLE:
        again = shlex.join(["dinotune", *words] + ([] if "--resume" in words else ["--resume"]))
        return f"interrupted: the checkpoints written so far are kept; continue exactly with:\n  {again}"
    if command in CACHED:
        again = shlex.join(["dinotune", *words])
        return f"interrupted: the features extracted so far are cached; continue from them with:\n  {again}"
    if command == "serve":
        return "stopped: the server has shut down (it writes nothing but its logs)."
    return "interrupted: nothing half-written was kept (outputs are written whole or not at all)."


def _disk_full(err: OSError) -> None:
    where = f" while writing {err.filename}" if err.filename else ""
    typer.secho(f"error: the disk is full{where}; free space (or point out=/DINOTUNE_HOME elsewhere) and run the "
                "command again: finished files were written whole, nothing half-written was kept.",
                fg="red", err=True)  # fmt: skip


def run_app(app: Callable[..., Any], argv: list[str], verbose: Callable[[], bool]) -> None:
    """Run `app` on `argv`; `verbose()` says (after parsing) whether user errors keep their traceback."""
    interrupted = [False]

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted[0] = True
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        app(args=argv, prog_name="dinotune")  # standalone: typer handles usage errors (exit 2) and --help itself
    except (KeyboardInterrupt, SystemExit) as exc:
        if not (isinstance(exc, KeyboardInterrupt) or interrupted[0]):
            raise  # a normal exit (typer's, or a verb's)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message short
        typer.secho(interrupted_message(argv), fg="yellow", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # outputs are already whole on disk; exit with 130 however Python would unwind
    except DinotuneError as err:
        if verbose():
            raise
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or verbose():
            raise
        _disk_full(err)
        sys.exit(2)
