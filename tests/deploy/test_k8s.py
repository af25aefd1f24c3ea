"""deploy/k8s/ is valid for current Kubernetes versions (strict schemas) and agrees with itself and the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dinotune.config import load_config
from dinotune.serve import ServeConfig, create_app

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSIONS = ["1.30.0", "1.33.0", kubernetes_validate.latest_version()]
CRDS = {"servicemonitor.yaml"}  # custom resources: no schema in kubernetes-validate; checked field by field below
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((K8S / name).read_text())


def _container() -> dict[str, Any]:
    return _load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]


def _serve_config(folder: Path) -> ServeConfig:
    """The server's config as the pod gets it: the ConfigMap's file, read by the server's own loader."""
    path = folder / "serve.yaml"
    path.write_text(_load("configmap.yaml")["data"]["serve.yaml"])
    return load_config(ServeConfig, path)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(set(MANIFESTS) - CRDS))
def test_manifest_is_valid_for_kubernetes(name: str, version: str) -> None:
    kubernetes_validate.validate(_load(name), version, strict=True)  # raises ValidationError naming the field


def test_kustomization_applies_every_manifest_and_sets_the_registry() -> None:
    kustomization = _load("kustomization.yaml")
    assert set(kustomization["resources"]) == set(MANIFESTS) - CRDS
    (image,) = kustomization["images"]
    assert image["name"] == _container()["image"].split(":")[0]
    assert "/" in image["newName"] and image["newName"].endswith("/dinotune")  # REGISTRY/dinotune
    assert "REGISTRY" in (K8S / "kustomization.yaml").read_text()  # the placeholder says what to replace


def test_guaranteed_qos_and_threads_follow_the_cpu_limit(tmp_path: Path) -> None:
    resources = _container()["resources"]
    assert resources["requests"] == resources["limits"] and {"cpu", "memory"} <= set(resources["limits"])
    config = _serve_config(tmp_path)
    assert config.threads == int(resources["limits"]["cpu"]) and config.workers == 1


def test_config_file_is_what_the_server_reads() -> None:
    container = _container()
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert config_path.parent == Path(mount["mountPath"])
    volumes = _load("deployment.yaml")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == "config"]
    assert volume["configMap"]["name"] == _load("configmap.yaml")["metadata"]["name"]
    assert config_path.name in _load("configmap.yaml")["data"]


def test_shutdown_outlasts_the_longest_request(tmp_path: Path) -> None:
    pod = _load("deployment.yaml")["spec"]["template"]["spec"]
    command = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + _serve_config(tmp_path).request_timeout_s


def test_probes_point_at_real_endpoints(tmp_path: Path) -> None:
    routes = {route.path for route in create_app(tmp_path).routes}  # the model loads at startup only
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health" in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready" in routes
    assert container["ports"][0]["containerPort"] == 8000 and "8000" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"])  # uploads' temp files


def test_selectors_and_targets_match_the_deployment() -> None:
    deployment = _load("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_name = _container()["ports"][0]["name"]
    service = _load("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port_name
    for name in ("pdb.yaml", "networkpolicy.yaml"):
        selector = _load(name)["spec"].get("selector") or _load(name)["spec"]["podSelector"]
        assert selector["matchLabels"].items() <= labels.items(), name
    target = _load("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    policy = _load("networkpolicy.yaml")["spec"]
    assert policy["ingress"][0]["ports"][0]["port"] == port_name and policy["egress"] == []


def test_service_monitor_scrapes_the_metrics_of_the_service(tmp_path: Path) -> None:
    monitor = _load("servicemonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    service = _load("service.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    routes = {route.path for route in create_app(tmp_path).routes}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
        assert endpoint["path"] in routes
    # what a schema can check: its metadata, as the ObjectMeta of a core resource
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": monitor["metadata"]}, VERSIONS[-1], strict=True
    )
