"""docs/serve.md says what the code does: the slim install is the serve-onnx extra, the environment
variables are the ones read, the config fields exist, and every metric it lists is in /metrics."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx

from dinotune.serve import ServeConfig, create_app, environment
from tests.serve.helpers import png_bytes, running

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "serve.md").read_text()


def _name(requirement: str) -> str:
    return re.split(r"[<>=!;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def test_the_slim_install_is_the_serve_onnx_extra() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve-onnx"]
    command = re.search(r"pip install --no-deps dinotune\npip install (.*?)#", PAGE, flags=re.S)
    assert command is not None
    assert sorted(command.group(1).replace("\\", " ").split()) == sorted(_name(r) for r in extra)


def test_environment_variables_and_config_fields_exist() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", PAGE, flags=re.M))
    assert documented == {environment.MODEL_ENV, environment.CONFIG_ENV, environment.MULTIPROC_ENV}
    paragraph = PAGE.split("`serve.yaml` holds any `ServeConfig` field", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", paragraph))
    thresholds = {"confidence_window", "low_confidence_threshold", "drift_window", "drift_threshold"}
    assert listed | thresholds | {"alert_min_samples"} == set(ServeConfig.model_fields)


def test_every_documented_metric_is_served(onnx_export: Path) -> None:
    section = PAGE.split("## Metrics", 1)[1].split("## OpenAPI", 1)[0]
    documented = {
        m
        for m in re.findall(r"`([a-z_]+)(?:\{[^}]*\})?`", section)
        if m.startswith(("dinotune_", "process_", "python_"))
    }
    assert len(documented) >= 10
    with running(create_app(onnx_export)) as base:
        httpx.post(f"{base}/predict", files={"file": ("x.png", png_bytes(0))}, timeout=30)
        httpx.post(f"{base}/predict", files={"file": ("x.txt", b"not an image")}, timeout=30)  # an error
        text = httpx.get(f"{base}/metrics", timeout=10).text
    served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert documented <= served, documented - served
