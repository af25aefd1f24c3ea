"""What serving reads is readable by another user, whatever the writer's umask and the library's own modes
(safetensors writes 0600): a container's uid 10001 serves a run that root (or anyone) trained."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dinotune.atomic import atomic_dir, atomic_path, make_dirs
from dinotune.backbones import load_backbone
from dinotune.verbs.convert import convert_checkpoint
from dinotune.verbs.finetune import run_finetune
from tests.serve.helpers import png_bytes
from tests.training_fixtures import SUBPROCESS_ENV, finetune_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_umask() -> Iterator[None]:
    """The strictest usual umask: everything this process creates is owner-only unless published."""
    before = os.umask(0o077)
    yield
    os.umask(before)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can enter (pytest's own tmp_path sits in an owner-only folder)."""
    folder = Path(tempfile.mkdtemp(prefix="dinotune-perm-"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def _modes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): oct(stat.S_IMODE(p.stat().st_mode)) for p in [folder, *folder.rglob("*")]}


def _world_readable(folder: Path, only: tuple[str, ...] = ("**/*",)) -> None:
    for path in {folder, *(p for pattern in only for p in folder.glob(pattern))}:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & (0o555 if path.is_dir() else 0o444) == (0o555 if path.is_dir() else 0o444), _modes(folder)


def test_published_files_and_folders_are_world_readable_under_umask_077(private_umask, tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "new" / "hf") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors' own mode: 0600
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    with atomic_path(tmp_path / "new" / "head.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    modes = _modes(tmp_path / "new")
    assert modes == {
        ".": "0o755",
        "hf": "0o755",
        "hf/model.safetensors": "0o644",
        "hf/sub": "0o755",
        "hf/sub/config.json": "0o644",
        "head.safetensors": "0o644",
    }


def test_make_dirs_publishes_only_the_folders_it_creates(private_umask, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    make_dirs(mine / "a" / "b")
    assert _modes(mine) == {".": "0o700", "a": "0o755", "a/b": "0o755"}  # the user's own folder is kept


def test_convert_writes_a_readable_hugging_face_folder(private_umask, tmp_path: Path) -> None:
    pth = tmp_path / "backbone.pth"
    torch.save(load_backbone("random:vit_test16", device="cpu").official_state_dict(), pth)
    _world_readable(convert_checkpoint(pth, tmp_path / "hf"))


def _other_user() -> tuple[int, int]:
    """uid/gid of `nobody`: any account other than the writer's shows the problem."""
    if os.geteuid() != 0:
        message = "serving as another user needs root (to switch to `nobody`)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


# Run in a fresh interpreter: warm up as root (the interpreter may live in root's home, e.g. pyenv, and
# imports are lazy), then drop to the other user for good and load each model again through the app.
AS_OTHER_USER = """
import json, os, sys, time
from fastapi.testclient import TestClient
from dinotune.serve import create_app

IMAGE = open(sys.argv[4], "rb").read()

def served(folder):
    with TestClient(create_app(folder)) as client:
        while (ready := client.get("/ready")).status_code == 503 and "loading" in ready.text:
            time.sleep(0.1)
        if ready.status_code != 200:
            return {"ready": ready.status_code, "detail": ready.json()["detail"]}
        answer = client.post("/predict", files={"file": ("a.png", IMAGE)})
        return {"ready": 200, "predict": answer.status_code, "answer": answer.json()}

served(sys.argv[3])
os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[1]))
print(json.dumps({"uid": os.getuid(), "runs": [served(folder) for folder in sys.argv[3:4] + sys.argv[5:]]}))
"""


def test_a_finetuned_run_written_under_umask_077_is_served_by_another_user(
    private_umask, shared_tmp: Path, digits: Path, one_torch_thread
) -> None:
    uid, gid = _other_user()
    run = shared_tmp / "runs" / "finetune"
    run_finetune(finetune_config(digits, run, trainer={"max_epochs": 1, "progress_bar": False}))
    serving_reads = ("runs", "runs/finetune", "runs/finetune/model.json", "runs/finetune/head.safetensors",
                     "runs/finetune/backbone", "runs/finetune/backbone/*")  # fmt: skip
    assert (run / "backbone" / "model.safetensors").is_file()
    _world_readable(shared_tmp, serving_reads)
    private = shared_tmp / "private"  # the bug this guards against: safetensors' 0600, as before the fix
    shutil.copytree(run, private)
    (private / "backbone" / "model.safetensors").chmod(0o600)
    image = shared_tmp / "a.png"
    image.write_bytes(png_bytes())
    env = {**SUBPROCESS_ENV, "PYTHONPATH": str(REPO / "src"), "HOME": str(shared_tmp)}
    args = [str(uid), str(gid), str(run), str(image), str(private)]
    done = subprocess.run([sys.executable, "-c", AS_OTHER_USER, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    ours, unreadable = result["runs"]
    assert result["uid"] == uid
    assert ours["ready"] == 200 and ours["predict"] == 200, ours
    classes = json.loads((run / "model.json").read_text())["classes"]
    labels = [p["label"] for p in ours["answer"]["predictions"]]
    assert labels and set(labels) <= set(classes), ours
    assert unreadable["ready"] == 503 and "model.safetensors" in unreadable["detail"], unreadable  # the drop is real
