"""An ONNX export is served with none of torch and the training dependencies importable: `dinotune serve
EXPORT` in a process where importing them fails answers /predict like the PyTorch run it came from."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import numpy as np

from dinotune.serve import load_engine
from dinotune.serve.images import decode_upload
from tests.serve.helpers import CLASSES, free_port, png_bytes, server_process

ROOT = Path(__file__).resolve().parents[2]
# what a slim image leaves out: torch and every training-only dependency (and OpenCV, which albumentations needs)
ABSENT = (
    "torch", "lightning", "transformers", "peft", "matplotlib", "sklearn", "albumentations", "cv2", "torchmetrics",
    "scipy", "safetensors", "timm", "torchvision",
)  # fmt: skip
SHIM = f"""import sys
for name in {ABSENT!r}:
    sys.modules[name] = None  # `import name` raises ImportError
"""


def test_onnx_export_serves_without_torch(onnx_export: Path, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    port = free_port()
    command = [sys.executable, "-m", "dinotune", "serve", str(onnx_export), "--port", str(port), "top_k=3"]
    images = [png_bytes(seed, size=size) for seed, size in [(1, (40, 50)), (2, (64, 33)), (3, (20, 20))]]
    with server_process(command, port, env) as base:
        info = httpx.get(f"{base}/info", timeout=10).json()
        answers = [httpx.post(f"{base}/predict", files={"file": ("x.png", data)}, timeout=30) for data in images]
    assert info["runtime"] == "onnxruntime" and info["model"] == "cats" and len(info["checksum"]) == 64
    run = load_engine(onnx_export.parent)  # the PyTorch run folder, through its training transform
    assert run.runtime == "torch"
    for data, answer in zip(images, answers, strict=True):
        assert answer.status_code == 200, answer.text
        served = {p["index"]: p["probability"] for p in answer.json()["predictions"]}
        image = run.preprocess(decode_upload(data, "x", channels=3, max_pixels=10**6))
        expected = run.run(image[None])[0][0]
        assert sorted(served) == list(range(len(CLASSES)))
        np.testing.assert_allclose([served[i] for i in range(len(CLASSES))], expected, atol=1e-4)


def test_the_shim_really_blocks_torch(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    probe = "try:\n    import torch\nexcept ImportError:\n    print('blocked')"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "blocked", out.stderr
