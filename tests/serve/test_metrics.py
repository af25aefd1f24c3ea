"""/metrics has what an operator expects: process and platform metrics, dinotune_model_info with the
card's name and the served file's sha256, and no errors counted for /ready's 503 while the model loads."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dinotune.model.card import read_card
from dinotune.serve import create_app
from dinotune.serve.runtime import load_engine
from tests.serve.helpers import png_bytes, running


def _samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_process_metrics_and_model_info(onnx_export: Path) -> None:
    with running(create_app(onnx_export)) as base:
        assert httpx.post(f"{base}/predict", files={"file": ("x.png", png_bytes(0))}, timeout=30).status_code == 200
        samples = _samples(httpx.get(f"{base}/metrics", timeout=10).text)
    names = {s.name for s in samples}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "python_info"} <= names
    info = [s for s in samples if s.name == "dinotune_model_info"]
    sha256 = hashlib.sha256((onnx_export / "model.onnx").read_bytes()).hexdigest()
    assert len(info) == 1 and info[0].value == 1
    assert info[0].labels["name"] == "cats" and info[0].labels["checksum"] == sha256
    assert info[0].labels["task"] == "classify" and info[0].labels["runtime"] == "onnxruntime"
    assert info[0].labels["version"]


def test_the_name_comes_from_the_card(onnx_export: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(onnx_export, tmp_path / "model")  # mounted as /models/model in a container
    assert load_engine(onnx_export).name == "cats"  # RUN/export: the run's name
    assert load_engine(folder).name == "cats"  # export wrote it into the card: it survives the move
    card = json.loads((folder / "model.json").read_text())
    card["name"] = ""
    (folder / "model.json").write_text(json.dumps(card))
    assert load_engine(folder).name == "model"  # no name in the card, not an export/ folder: the folder's
    card["name"] = "cats-v3"
    (folder / "model.json").write_text(json.dumps(card))
    assert load_engine(folder).name == "cats-v3"


def test_a_checksum_recorded_in_the_card_is_reported(onnx_export: Path) -> None:
    recorded = read_card(onnx_export).files["model.onnx"]["sha256"]
    assert load_engine(onnx_export).checksum == recorded


def test_ready_503_while_loading_is_not_an_error(onnx_export: Path, monkeypatch) -> None:
    import dinotune.serve.server as server_module

    real = server_module.load_engine

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(server_module, "load_engine", slow)
    with running(create_app(onnx_export), wait_ready=False) as base:
        codes = []
        while not codes or codes[-1] != 200:
            codes.append(httpx.get(f"{base}/ready", timeout=5).status_code)
            time.sleep(0.05)
        httpx.post(f"{base}/predict", content=b"x", headers={"content-type": "text/plain"}, timeout=10)  # a real 415
        samples = _samples(httpx.get(f"{base}/metrics", timeout=10).text)
    assert codes.count(503) >= 3
    ready_503 = [
        s for s in samples if s.name == "dinotune_requests_total" and s.labels == {"endpoint": "/ready", "code": "503"}
    ]
    assert ready_503 and ready_503[0].value == codes.count(503)  # counted as requests...
    errors = {s.labels["code"]: s.value for s in samples if s.name == "dinotune_errors_total"}
    assert errors == {"415": 1.0}  # ...but not as errors
