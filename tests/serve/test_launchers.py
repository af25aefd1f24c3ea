"""The launchers an operator uses: every example of `dinotune serve --help` runs as printed, the app
factory reads its environment, and with 2 workers (gunicorn, or `--workers 2`) /metrics counts every request."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from dinotune.cli import app as cli
from dinotune.errors import ConfigError
from dinotune.serve import ServeConfig, create_app
from dinotune.serve.environment import from_environment
from tests.serve.helpers import free_port, png_bytes, server_process

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "runs/probe/export"


def _help_examples() -> list[str]:
    """The example command lines of `dinotune serve --help`, continuation lines joined."""
    text = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    block = text.split("Examples", 1)[1].replace("\\\n", " ")
    return [" ".join(line.split()[1:]) for line in block.splitlines() if line.strip().startswith("$ ")]


def _runnable(example: str, model: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The example as a process: env assignments split off, the placeholder and port replaced."""
    words = shlex.split(example.replace(PLACEHOLDER, str(model)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    while re.fullmatch(r"[A-Z_]+=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words[0] in ("dinotune", "uvicorn"), example
    if "--port" in words:
        words.pop(words.index("--port") + 1)
        words.remove("--port")
    return [sys.executable, "-m", *words, "--port", str(port)], env


def _metric(text: str, metric: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def _posts(base: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        answers = await asyncio.gather(
            *(client.post(f"{base}/predict", files={"file": ("x.png", png_bytes(i))}) for i in range(n))
        )
    return [a.status_code for a in answers]


def _served_by(shared: Path) -> dict[str, float]:
    """Successful /predict answers per worker pid, read from each worker's own metrics file."""
    counts = {}
    for path in shared.glob("counter_*.db"):
        metrics = MultiProcessCollector.merge([str(path)])
        counts[path.stem.split("_")[-1]] = sum(
            s.value for m in metrics for s in m.samples if s.name == "dinotune_requests_total" and s.labels == {
                "endpoint": "/predict", "code": "200"}
        )  # fmt: skip
    return counts


def _every_request_counted(base: str, shared: Path, sent: int = 0) -> None:
    """Send requests until both workers have answered some, then /metrics must count all of them
    (`sent`: successful /predict requests made before)."""
    for _ in range(40):
        codes = asyncio.run(_posts(base, 4))
        assert codes == [200] * 4, codes
        sent += 4
        if sum(1 for n in _served_by(shared).values() if n > 0) >= 2:
            break
    served = _served_by(shared)
    assert sum(1 for n in served.values() if n > 0) == 2, served
    text = httpx.get(f"{base}/metrics", timeout=10).text
    assert _metric(text, "dinotune_requests_total", endpoint="/predict", code="200") == sent
    assert _metric(text, "dinotune_model_ready") == 1
    assert len({s.labels["pid"] for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "process_resident_memory_bytes"}) == 2  # fmt: skip
    assert _metric(text, "dinotune_model_info", name="cats", task="classify", runtime="onnxruntime") == 1


def test_help_examples_run_as_printed(onnx_export: Path, tmp_path: Path) -> None:
    examples = _help_examples()
    assert len(examples) == 3, examples
    for example in examples:
        port = free_port()
        command, env = _runnable(example, onnx_export, port)
        shared = tmp_path / f"metrics-{port}"
        if "--workers" in command:
            shared.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
        with server_process(command, port, env) as base:
            answer = httpx.post(f"{base}/predict", files={"file": ("x.png", png_bytes(0))}, timeout=30)
            assert answer.status_code == 200 and answer.json()["model"] == "cats", (example, answer.text)
            if "max_batch_size=16" in example:
                assert httpx.get(f"{base}/info", timeout=10).json()["limits"]["max_batch_size"] == 16
            if "--workers" in command:
                _every_request_counted(base, shared, sent=1)


def test_gunicorn_two_workers_count_every_request(onnx_export: Path, tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    port, shared = free_port(), tmp_path / "metrics"
    shared.mkdir()
    (tmp_path / "serve.yaml").write_text("max_batch_size: 4\nworkers: 2\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "DINOTUNE_MODEL": str(onnx_export),
        "DINOTUNE_CONFIG": str(tmp_path / "serve.yaml"),
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
    }
    command = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2"]
    command += ["-b", f"127.0.0.1:{port}", "dinotune.serve.app:create_app()"]
    with server_process(command, port, env) as base:
        assert httpx.get(f"{base}/info", timeout=10).json()["limits"]["max_batch_size"] == 4
        _every_request_counted(base, shared)


def test_the_factory_reads_its_environment(onnx_export: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="DINOTUNE_MODEL is not set"):
        from_environment({})
    (tmp_path / "serve.yaml").write_text("max_batch_size: 3\n")
    model, config = from_environment(
        {"DINOTUNE_MODEL": str(onnx_export), "DINOTUNE_CONFIG": str(tmp_path / "serve.yaml")}
    )
    assert model == onnx_export and config == ServeConfig(max_batch_size=3)
    (tmp_path / "bad.yaml").write_text("data:\n  image_size: 112\n")
    with pytest.raises(ConfigError, match="unknown key 'data'"):
        from_environment({"DINOTUNE_MODEL": str(onnx_export), "DINOTUNE_CONFIG": str(tmp_path / "bad.yaml")})
    monkeypatch.setenv("DINOTUNE_MODEL", str(onnx_export))
    monkeypatch.delenv("DINOTUNE_CONFIG", raising=False)
    assert create_app().state.server.model == onnx_export
