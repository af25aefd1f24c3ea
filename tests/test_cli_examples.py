"""Every `$ dinotune ...` example in every command's --help runs, as written, on tiny generated data; and each
run is quiet: no Python warnings, no repr dumps, no third-party log lines on stderr at the default verbosity.

The examples run once per module in the order below (later ones use the runs of earlier ones). Each runs in
its own `dinotune` process, forked from one interpreter that imported the verbs once: imports are most of a
tiny run's time, and the CLI imports verbs only after it set its filters, so forking hides nothing. The folder
holds `images/` (an ImageFolder with train/val/test) and `configs/` (the shipped configs, with the random test
backbone where they name DINOv3 weights); DINOTUNE_BACKBONE=random:vit_test16, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from dinotune.cli import app
from dinotune.cli_help import help_examples

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["data check", "data stats", "archs", "embed", "probe", "knn", "train", "pretrain", "convert", "evaluate",
         "export", "predict", "compare", "quickstart", "serve"]  # fmt: skip


def _commands(group, prefix: str = "") -> dict[str, object]:
    found = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found |= _commands(command, f"{prefix}{name} ")
        else:
            found[f"{prefix}{name}"] = command
    return found


def _help(command) -> str:
    import click

    return command.get_help(click.Context(command, info_name="dinotune"))


COMMANDS = _commands(typer.main.get_command(app))
EXAMPLES = [(name, example) for name in ORDER if name in COMMANDS for example in help_examples(_help(COMMANDS[name]))]

THIRD_PARTY = re.compile(
    r"^(INFO|DEBUG|WARNING):|GPU available|TPU available|LOCAL_RANK|litlogger|Lightning|lightning\.|"
    r"transformers|Seed set|eval mode|it/s|\d+%\||━━",
)
PYTHON_WARNING = re.compile(r"\b\w*Warning\b|warnings\.warn|^\s+File \"|Traceback")
REPR = re.compile(r"\b[A-Z]\w+\(\w+=|object at 0x|<[\w.]+ @\d+>")


def _tiny_imagefolder(root: Path, per_split: dict[str, int], size: int = 32) -> Path:
    """3 classes told apart by colour, with noise: enough for every verb, small enough to be quick."""
    rng = np.random.default_rng(0)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    for split, n in per_split.items():
        for c, colour in enumerate(colours):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(colour, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _configs_with_a_test_backbone(dest: Path) -> None:
    """The shipped configs, with the random test backbone where they name DINOv3 weights (no download)."""
    for path in (ROOT / "configs").rglob("*.yaml"):
        target = dest / path.relative_to(ROOT / "configs")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(re.sub(r"(source: )facebook/\S+", r"\1random:vit_test16", path.read_text()))


ZYGOTE = """
import importlib, json, os, sys, traceback
import dinotune.cli
for name in ("probe", "finetune", "segment", "pretrain", "embed", "evaluate", "export", "predict", "compare",
             "convert", "quickstart"):
    importlib.import_module(f"dinotune.verbs.{name}")
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(job["cwd"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv, code = ["dinotune", *job["args"]], 0
        try:
            dinotune.cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Forker:
    """Runs `dinotune ARGS` in a child of one interpreter that has imported the verbs already."""

    def __init__(self, env: dict, logs: Path) -> None:
        self.logs, self.count = logs, 0
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip

    def run(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        job = {"args": args, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        code = int(self.proc.stdout.readline())
        return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Start the server of a `serve` example (on a free port), wait for /health, stop it."""
    port = _free_port()
    args = [str(port) if a == "8000" else a for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "dinotune", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    code, deadline = 1, time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                code = 0 if response.status == 200 else 1
                break
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("examples")
    _tiny_imagefolder(work / "images", {"train": 10, "val": 5, "test": 5})
    _configs_with_a_test_backbone(work / "configs")
    env = {**os.environ, "DINOTUNE_BACKBONE": "random:vit_test16", "DINOTUNE_HOME": str(work / "home"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    env.pop("PYTHONWARNINGS", None)  # the CLI itself must keep warnings off the screen
    results, logs = {}, work / "logs"
    logs.mkdir()
    forker = Forker(env, logs)
    for command, example in EXAMPLES:
        args = shlex.split(example)[1:]
        if command == "serve":
            results[example] = _serve(args, work, env)
            continue
        start = time.monotonic()
        results[example] = forker.run(args, work)
        print(f"{time.monotonic() - start:6.1f} s  {example}")  # shown with -s: where the time goes
    forker.close()
    return results


def test_every_command_has_an_example_and_a_place_in_the_order() -> None:
    assert sorted(COMMANDS) == sorted(ORDER), "add the new command to ORDER (after the commands it needs)"
    missing = [name for name in ORDER if not help_examples(_help(COMMANDS[name]))]
    assert not missing, f"commands without a `$ dinotune ...` example in their help: {missing}"


@pytest.mark.parametrize(("command", "example"), EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_help_example_runs_quietly(ran: dict, command: str, example: str) -> None:
    result = ran[example]
    assert result.returncode == 0, f"{example}\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    for pattern, what in ((PYTHON_WARNING, "a Python warning"), (REPR, "a repr dump"), (THIRD_PARTY, "a library log")):
        bad = [line for line in lines if pattern.search(line)]
        assert not bad, f"{example}: stderr has {what}: {bad[:3]}"
    assert sum(line.startswith("RANDOM WEIGHTS") for line in lines) <= 1  # the notice once per command


def test_a_ten_epoch_sweep_prints_at_most_15_lines(ran: dict) -> None:
    (example,) = [e for _, e in EXAMPLES if "sweep.epochs=10" in e]
    result = ran[example]
    printed = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and 2 <= len(printed) <= 15, printed


def test_training_off_a_terminal_prints_plain_progress_lines_not_a_bar(ran: dict) -> None:
    (example,) = [e for c, e in EXAMPLES if c == "train" and "--resume" not in e]
    lines = ran[example].stderr.splitlines()
    assert any(line.startswith("epoch 2/2 (step ") and "val/accuracy" in line for line in lines), lines
