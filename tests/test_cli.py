"""The real `dinotune` command: user errors are one line with exit code 2, outputs land on disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dinotune", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run("convert", str(tmp_path / "missing.pth"), str(tmp_path / "out"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing.pth" in lines[0]
    assert "Traceback" not in result.stderr


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    result = run("--verbose", "convert", str(tmp_path / "missing.pth"), str(tmp_path / "out"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_typo_in_override_suggests_the_key(tmp_path: Path) -> None:
    result = run("embed", str(tmp_path), "--out", str(tmp_path / "e.safetensors"), "batch_sise=3")
    assert result.returncode == 2
    assert "did you mean 'batch_size'" in result.stderr


def test_embed_writes_features_and_names(tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "imgs" / "sub"
    images.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (40 + i, 30), color=(i * 40, 10, 200)).save(images / f"im{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "emb.safetensors"
    result = run(
        "embed",
        str(tmp_path / "imgs"),
        "--out",
        str(out),
        "-b",
        "random:vit_test16",
        "--image-size",
        "32",
        "--num-workers",
        "0",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert result.returncode == 0, result.stderr
    with safe_open(str(out), framework="pt") as handle:
        files = json.loads(handle.metadata()["files"])
        assert files == [f"sub/im{i}.png" for i in range(5)]
        assert handle.get_tensor("cls").shape == (5, 64)
        assert handle.get_tensor("patch_mean").shape == (5, 64)
        assert json.loads(handle.metadata()["backbone"])["arch"] == "vit_test16"
    assert "broken.jpg" in result.stderr  # the bad file is reported, not fatal


@pytest.mark.parametrize("name", ["vits16_style_depth3"])
def test_convert_command(fixtures_dir: Path, tmp_path: Path, name: str) -> None:
    result = run("convert", str(fixtures_dir / name / "checkpoint.pth"), str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hf" / "config.json").is_file()


def test_a_full_disk_is_one_line_not_a_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    import errno

    import dinotune.cli as cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "head.safetensors"))

    monkeypatch.setattr(cli, "app", full)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert "disk is full while writing" in err and "head.safetensors" in err


def _interrupt_when(ready, args: list[str], cwd: Path) -> tuple[str, list[str]]:
    """Start `dinotune ARGS`, press Ctrl-C once `ready()` is true; (stderr, the command it printed to continue)."""
    import shlex
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "dinotune", *args], cwd=cwd, env=CHILD_ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while not ready() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    return err, shlex.split(err.strip().splitlines()[-1])


def _continue(command: list[str], cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    assert command[0] == "dinotune"
    done = subprocess.run([sys.executable, "-m", "dinotune", *command[1:], *extra], cwd=cwd, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done


CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_ctrl_c_in_train_keeps_the_checkpoints_exits_130_and_the_printed_command_resumes(tmp_path: Path) -> None:
    from dinotune.data.bundled import digits_imagefolder

    digits_imagefolder(tmp_path / "d", size=32)
    config = Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml"
    args = ["train", str(config), "data.root=d", "out=ft", "backbone.source=random:vit_test16", "data.image_size=32",
            "trainer.max_epochs=30", "data.num_workers=0", "trainer.progress_bar=false"]  # fmt: skip
    err, command = _interrupt_when((tmp_path / "ft" / "checkpoints" / "last.ckpt").is_file, args, tmp_path)
    assert "interrupted: the checkpoints written so far are kept" in err
    assert command[-1] == "--resume"
    _continue(command, tmp_path, "trainer.max_epochs=3")
    assert (tmp_path / "ft" / "metrics.json").is_file()


def test_ctrl_c_in_pretrain_keeps_the_checkpoints_exits_130_and_the_printed_command_resumes(tmp_path: Path) -> None:
    from dinotune.data.bundled import digits_imagefolder

    digits_imagefolder(tmp_path / "d", size=32)
    config = Path(__file__).resolve().parents[1] / "configs" / "ssl_continuation.yaml"
    args = ["pretrain", str(config), "data.root=d", "out=ssl", "backbone.source=random:vit_test16",
            "data.batch_size=16", "data.num_workers=0", "crops.global_size=32", "crops.local_size=16",
            "crops.n_local=2", "heads.out_dim=256", "heads.hidden_dim=64", "trainer.max_steps=500",
            "trainer.checkpoint_every_n_steps=2"]  # fmt: skip
    err, command = _interrupt_when((tmp_path / "ssl" / "checkpoints" / "last.ckpt").is_file, args, tmp_path)
    assert "interrupted: the checkpoints written so far are kept" in err
    assert command[-1] == "--resume"
    done = _continue(command, tmp_path, "trainer.max_steps=6")
    assert (tmp_path / "ssl" / "backbone.pth").is_file(), done.stderr


def test_ctrl_c_in_probe_keeps_the_features_exits_130_and_the_printed_command_continues(tmp_path: Path) -> None:
    from dinotune.data.bundled import digits_imagefolder

    digits_imagefolder(tmp_path / "d", size=32)
    cache = tmp_path / "cache"
    args = ["probe", "d", "-b", "random:vit_test16", "--image-size", "64", "-o", "p", f"cache_dir={cache}",
            "sweep.epochs=5"]  # fmt: skip
    err, command = _interrupt_when(lambda: any(cache.rglob("shard-*.safetensors")), args, tmp_path)
    assert "interrupted: the features extracted so far are cached" in err
    assert command[1:] == args
    done = _continue(command, tmp_path)
    reused = sum(int(n) for n in re.findall(r"(\d+) cached\)", done.stderr))
    assert reused > 0, done.stderr  # it continued from the features kept, not from scratch
    assert (tmp_path / "p" / "model.json").is_file()


def _all_commands():
    import typer

    from dinotune.cli import app

    def walk(group, prefix):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, f"{prefix}{name} ")
            yield f"{prefix}{name}", command

    root = typer.main.get_command(app)
    return [("", root), *walk(root, "")]


def test_help_of_every_command_is_plain_words() -> None:
    import click

    for name, command in _all_commands():
        text = command.get_help(click.Context(command, info_name="dinotune"))
        assert not set("<>{}") & set(text), f"dinotune {name} --help:\n{text}"
        assert text.startswith("Usage: dinotune"), text
    usage = dict(_all_commands())["predict"].get_usage(click.Context(dict(_all_commands())["predict"]))
    assert usage.endswith("[OPTIONS] RUN IMAGES...")


def test_global_flags_are_accepted_anywhere(tmp_path: Path) -> None:
    from dinotune.cli_run import hoist_global_flags

    assert hoist_global_flags(["probe", "d", "-v", "x=1"]) == ["-v", "probe", "d", "x=1"]
    assert hoist_global_flags(["probe", "--quiet", "--", "-v"]) == ["--quiet", "probe", "--", "-v"]
    result = run("convert", str(tmp_path / "missing.pth"), str(tmp_path / "out"), "--verbose")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_the_vocabulary_table_is_complete_and_current() -> None:
    import typer

    from dinotune.cli import app
    from dinotune.cli_vocabulary import BEGIN, vocabulary_table, write_table

    table = vocabulary_table(typer.main.get_command(app))  # a parameter without a name raises KeyError
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert BEGIN in page, "docs/cli.md lost its vocabulary markers"
    assert write_table(page, typer.main.get_command(app)) == page, "run: python scripts/write_cli_vocabulary.py"
    for _, command in _all_commands():
        for param in command.params:
            if param.name != "help":
                spelled = param.metavar or param.name.upper() if param.param_type_name == "argument" else None
                assert spelled is None or f"`{spelled}`" in table or param.name in ("verbose", "silent")
    assert "| `probe` | `-b, --backbone` | `backbone.source` |" in table
    assert "| `export` | `--calibration-images` | `calibration_images` |" in table


def test_cli_options_build_the_config_keys_the_table_names() -> None:
    from dinotune.cli_vocabulary import config_values

    assert config_values("probe", data="d", image_size=32, backbone="b") == {
        "data": {"root": "d", "image_size": 32},
        "backbone": {"source": "b"},
    }
    assert config_values("embed", data="d", image_size=32) == {"data_dir": "d", "image_size": 32}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "{data}"], "is a folder; train takes a YAML config, e.g. `dinotune train configs/finetune.yaml"),
        (["compare", "{data}"], "is not a run folder"),
        (["train", "{data}/missing.yaml"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_in_the_users_words(tmp_path: Path, args: list[str], expected: str) -> None:
    (tmp_path / "images" / "a").mkdir(parents=True)
    result = run(*[a.format(data=tmp_path / "images") for a in args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert "fmt=" not in lines[0] and "None" not in lines[0]


def test_ctrl_c_on_serve_says_the_server_stopped_not_that_outputs_were_discarded() -> None:
    from dinotune.cli_run import interrupted_message

    assert interrupted_message(["--verbose", "serve", "runs/x"]).startswith("stopped: the server has shut down")
    assert "half-written" in interrupted_message(["predict", "runs/x", "img.png"])
