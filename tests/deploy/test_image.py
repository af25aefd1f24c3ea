"""The images, built for real by deploy/build.sh and run hardened: read-only root file system, every
capability dropped, the image's non-root user, /tmp the only writable place. Served predictions must equal
`dinotune predict` on the same files. Slow (minutes; the first build downloads the base packages and the
wheels): `pytest -m slow tests/deploy/test_image.py`, with a Docker engine running."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from dinotune.export.onnx import export_model
from dinotune.verbs.finetune import run_finetune
from tests.training_fixtures import SUBPROCESS_ENV, finetune_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Both images, as a user builds them with `deploy/build.sh` (the base is made only when missing)."""
    if shutil.which("docker") is None or _docker("info", check=False).returncode != 0:
        pytest.skip("no Docker engine (start one: dockerd --bridge=none --iptables=false, see docs/deploy.md)")
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
    for step in ("wheels", "all"):  # wheels: this checkout's dinotune wheel, whatever the wheelhouse held
        done = subprocess.run(["bash", "deploy/build.sh", step], cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout.strip().splitlines()[-2:])  # the image sizes
    return {target: f"dinotune:{VERSION}-{target}" for target in ("serve-onnx", "full")}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fine-tuned run (backbone weights in the run: served with PyTorch) and its ONNX export."""
    from dinotune.data.bundled import digits_imagefolder

    root = tmp_path_factory.mktemp("image")
    digits = digits_imagefolder(root / "digits", size=16)
    run = root / "run"
    run_finetune(finetune_config(digits, run, trainer={"max_epochs": 2, "progress_bar": False}))
    export_model(run, run / "export", calibration_images=digits)
    return {"run": run, "export": run / "export", "digits": digits}


@pytest.fixture(scope="module")
def probe_images(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """36 digits (the model's own size) and 6 photos-like images of other sizes and modes (resized)."""
    folder = tmp_path_factory.mktemp("probe")
    digits = sorted(models["digits"].rglob("*.png"))[::7][:36]
    paths = [shutil.copy(p, folder / f"{i:02d}_{p.name}") for i, p in enumerate(digits)]
    rng = np.random.default_rng(0)
    for i, (size, mode) in enumerate([((40, 50), "RGB"), ((64, 64), "L"), ((17, 33), "RGB"), ((100, 80), "RGB"),
                                      ((23, 23), "L"), ((16, 48), "RGB")]):  # fmt: skip
        pixels = rng.integers(0, 255, (*size, 3 if mode == "RGB" else 1), dtype=np.uint8).squeeze()
        paths.append(folder / f"photo{i}.png")
        Image.fromarray(pixels).save(paths[-1])  # 2-D: grayscale
    return [Path(p) for p in paths]


def _cli_predictions(model: Path, images: list[Path], out: Path) -> dict[str, tuple[str, float]]:
    """`dinotune predict MODEL IMAGES -o out.csv`, run as a user runs it: file name -> (label, probability)."""
    env = {**SUBPROCESS_ENV, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "dinotune", "predict", str(model), *map(str, images), "-o", str(out)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    with open(out, newline="") as handle:
        return {Path(row["file"]).name: (row["predicted"], float(row["probability"])) for row in csv.DictReader(handle)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def hardened(image: str, model: Path) -> Iterator[tuple[str, str]]:
    """Run `image` serving `model` on 127.0.0.1 (host network), read-only, no capabilities; yield (url, id)."""
    port = _free_port()
    run = _docker(
        "run", "--detach", "--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--volume", f"{model}:/models/model:ro",
        image, "/models/model", "--host", "127.0.0.1", "--port", str(port),
    )  # fmt: skip
    container = run.stdout.strip()
    try:
        yield f"http://127.0.0.1:{port}", container
    finally:
        _docker("stop", "--time", "30", container, check=False, timeout=60)
        _docker("rm", "--force", container, check=False)


def _wait_ready(url: str, container: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{url}/ready", timeout=5)
            if ready.status_code == 200:
                return
            assert "failed" not in ready.text, ready.text
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    logs = _docker("logs", container, check=False)
    raise AssertionError(f"not ready after {timeout_s} s:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")


def _served_equals_cli(image: str, model: Path, probe: list[Path], tmp_path: Path) -> int:
    expected = _cli_predictions(model, probe, tmp_path / "predictions.csv")
    assert len({label for label, _ in expected.values()}) > 1  # a model that tells images apart
    with hardened(image, model) as (url, container):
        _wait_ready(url, container)
        agree = 0
        for path in probe:
            answer = httpx.post(f"{url}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
            assert answer.status_code == 200, answer.text
            top = answer.json()["predictions"][0]
            label, probability = expected[path.name]
            assert top["label"] == label and abs(top["probability"] - probability) < 1e-4, (path.name, top, label)
            agree += 1
        _docker("stop", "--time", "30", container, timeout=60)
        state = json.loads(_docker("inspect", container).stdout)[0]["State"]
    assert state["ExitCode"] == 0, state  # SIGTERM: a graceful exit
    return agree


def test_images_run_as_non_root_and_slim_has_no_torch(images: dict[str, str]) -> None:
    for image in images.values():
        config = json.loads(_docker("image", "inspect", image).stdout)[0]["Config"]
        assert config["User"] == "10001:10001" and config["Entrypoint"] == ["dinotune", "serve"]
    slim = _docker("run", "--rm", "--network", "none", "--entrypoint", "python3", images["serve-onnx"], "-c",
                   "import importlib.util as u; print([m for m in ('torch', 'lightning', 'transformers', 'sklearn', "
                   "'matplotlib', 'peft', 'albumentations', 'cv2') if u.find_spec(m)])")  # fmt: skip
    assert slim.stdout.strip() == "[]"


def test_slim_image_serves_an_export_like_dinotune_predict(
    images: dict[str, str], models: dict[str, Path], probe_images: list[Path], tmp_path: Path
) -> None:
    assert _served_equals_cli(images["serve-onnx"], models["export"], probe_images, tmp_path) == len(probe_images)


def test_full_image_serves_a_finetuned_run_like_dinotune_predict(
    images: dict[str, str], models: dict[str, Path], probe_images: list[Path], tmp_path: Path
) -> None:
    assert _served_equals_cli(images["full"], models["run"], probe_images, tmp_path) == len(probe_images)
