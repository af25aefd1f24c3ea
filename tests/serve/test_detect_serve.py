"""/predict on a detector answers boxes in the image's own pixels, the same from the PyTorch run, its ONNX
export and a torch-free server of that export; the OpenAPI schema describes them."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from dinotune.serve.app import create_app
from dinotune.verbs.common import Result
from dinotune.verbs.detect_predict import detect_images
from tests.serve.helpers import free_port, server_process
from tests.serve.test_slim import ROOT, SHIM


def _upload(shapes64: Path, tmp_path: Path) -> tuple[Path, bytes]:
    """A test image enlarged to 80x112 (not square, not the model's size): boxes must come back in its pixels."""
    source = sorted((shapes64 / "images" / "test").iterdir())[0]
    path = tmp_path / "wide.png"
    Image.open(source).convert("RGB").resize((112, 80), Image.BILINEAR).save(path)
    return path, path.read_bytes()


def _served(model: Path, data: bytes) -> dict:
    with TestClient(create_app(model)) as client:
        for _ in range(100):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        answer = client.post("/predict", files={"file": ("x.png", data)})
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert answer.status_code == 200, answer.text
    return {"answer": answer.json(), "schema": schema}


def _boxes(answer: dict) -> np.ndarray:
    return np.array([d["box"] for d in answer["detections"]], np.float32).reshape(-1, 4)


def test_served_boxes_equal_predict_in_original_pixels(
    detect_run: Result, detect_export: Path, shapes64: Path, tmp_path: Path
) -> None:
    path, data = _upload(shapes64, tmp_path)
    _, [(_, _, expected)] = detect_images(detect_run.run_dir, [path])
    assert len(expected["boxes"]) > 0
    for model in (detect_run.run_dir, detect_export):
        served = _served(model, data)
        answer = served["answer"]
        assert (answer["height"], answer["width"]) == (80, 112)
        assert [d["index"] for d in answer["detections"]] == expected["labels"].tolist()
        assert np.abs(_boxes(answer) - expected["boxes"]).max() <= 0.01  # 2 decimals in the JSON
        assert {"label", "index", "score", "box"} <= set(served["schema"]["Detection"]["properties"])


def test_detection_export_serves_without_torch(detect_run: Result, detect_export: Path, shapes64: Path,
                                               tmp_path: Path) -> None:  # fmt: skip
    path, data = _upload(shapes64, tmp_path)
    (tmp_path / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    port = free_port()
    command = [sys.executable, "-m", "dinotune", "serve", str(detect_export), "--port", str(port)]
    with server_process(command, port, env) as base:
        info = httpx.get(f"{base}/info", timeout=10).json()
        answer = httpx.post(f"{base}/predict", files={"file": ("x.png", data)}, timeout=60)
    assert info["runtime"] == "onnxruntime" and info["task"] == "detect"
    assert answer.status_code == 200, answer.text
    _, [(_, _, expected)] = detect_images(detect_run.run_dir, [path])
    assert np.abs(_boxes(answer.json()) - expected["boxes"]).max() <= 0.01
