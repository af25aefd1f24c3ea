"""deploy/ cannot be built here (no Docker engine): check that it parses and agrees with the app."""

from __future__ import annotations

from pathlib import Path

import yaml

from dinotune.serve import create_app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _container() -> dict:
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    assert deployment["kind"] == "Deployment"
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_probes_point_at_real_endpoints_and_limits_are_set(tmp_path: Path) -> None:
    routes = {route.path for route in create_app(tmp_path).routes}  # the model loads at startup only
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health" in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready" in routes
    assert container["ports"][0]["containerPort"] == 8000 and "8000" in container["args"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"])  # uploads' temp files


def test_service_selects_the_deployment() -> None:
    service = yaml.safe_load((DEPLOY / "k8s" / "service.yaml").read_text())
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == _container()["ports"][0]["name"]


def test_dockerfile_is_cpu_non_root_and_health_checked() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert '".[serve,export]"' in text
    assert "\nUSER 10001" in text and "\nHEALTHCHECK" in text and "/health" in text
    assert 'ENTRYPOINT ["dinotune", "serve"]' in text
    instructions = [line.split()[0] for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    known = {
        "ARG",
        "FROM",
        "ENV",
        "RUN",
        "WORKDIR",
        "COPY",
        "LABEL",
        "USER",
        "EXPOSE",
        "HEALTHCHECK",
        "ENTRYPOINT",
        "CMD",
    }
    assert set(instructions) <= known, set(instructions) - known
