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


def _segmentation_export(root: Path) -> Path:
    """A random-weight ViT segmenter run, exported (fp32)."""
    import warnings

    from dinotune import load_backbone
    from dinotune.data.preprocessing import Preprocessing
    from dinotune.export.onnx import export_model
    from dinotune.heads.segment import HeadConfig
    from dinotune.model import ModelCard, build_segmenter, save_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
        backbone = load_backbone("random:vit_test16", device="cpu")
        model = build_segmenter(backbone, HeadConfig(type="linear"), 3).eval()
        card = ModelCard(
            task="segment",
            classes=["sky", "road", "car"],
            colours=[[0, 0, 0], [128, 0, 0], [0, 128, 0]],
            preprocessing=Preprocessing(32, mean=backbone.info.mean, std=backbone.info.std),
            backbone={"source": backbone.info.source, "in_chans": 3, "seed": 0},
            head={"type": "linear", "config": HeadConfig(type="linear").model_dump()},
            inference={"mode": "slide", "crop": 32, "stride": 20, "flip": True},
        )
        run = save_model(root / "roads", model, card)
        export_model(run, run / "export", timing_repeats=1)
    return run


def test_a_segmentation_export_serves_without_torch(tmp_path: Path) -> None:
    import base64
    import io

    from PIL import Image

    run = _segmentation_export(tmp_path)
    (tmp_path / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    port = free_port()
    data = png_bytes(5, size=(45, 61))  # several overlapping windows, not a multiple of the patch
    command = [sys.executable, "-m", "dinotune", "serve", str(run / "export"), "--port", str(port)]
    with server_process(command, port, env) as base:
        answer = httpx.post(f"{base}/predict", files={"file": ("x.png", data)}, timeout=60)
    assert answer.status_code == 200, answer.text
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["mask_png"]))))
    engine = load_engine(run)  # the PyTorch run, torch's sliding window
    probs = engine.segment(engine.preprocess(decode_upload(data, "x", channels=3, max_pixels=10**6)))
    assert mask.shape == (45, 61) and (mask == probs.argmax(0)).mean() >= 0.999


def test_the_shim_really_blocks_torch(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    probe = "try:\n    import torch\nexcept ImportError:\n    print('blocked')"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "blocked", out.stderr
