"""deploy/: the Dockerfile builds from local parts only, and the lock pins everything the images install.
(The images themselves are built and run in test_image.py, marked slow.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE_EXTRAS = ("serve", "export", "serve-onnx")


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())  # join continued lines
    return [tuple(line.split(maxsplit=1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    lines = [line for line in (DEPLOY / "constraints.txt").read_text().splitlines() if not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line) for line in lines), lines
    return {_normalise(name): version for name, version in (line.split("==") for line in lines)}


def test_dockerfile_builds_from_a_base_image_argument_and_the_wheelhouse_only() -> None:
    instructions = _instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=dinotune-base:bookworm")  # before the first FROM
    stages: set[str] = set()
    for keyword, rest in instructions:
        if keyword == "FROM":
            source, _, name = rest.split()
            assert source == "${BASE_IMAGE}" or source in stages, rest
            stages.add(name)
    assert {"serve-onnx", "full"} <= stages
    text = (DEPLOY / "Dockerfile").read_text()
    assert "PIP_NO_INDEX=1" in text and "PIP_CONSTRAINT=/wheels/constraints.txt" in text
    assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text  # no index, no registry
    assert ("USER", "10001:10001") in instructions
    assert ("ENTRYPOINT", '["dinotune", "serve"]') in instructions
    assert any(k == "HEALTHCHECK" and "/health" in rest for k, rest in instructions)
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
    assert {k for k, _ in instructions} <= known


def test_constraints_pin_every_package_the_images_install() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        wanted += project["optional-dependencies"].get(extra, [])
    pins = _pins()
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"sys_platform": "linux", "extra": ""}):
            name = _normalise(requirement.name)
            assert name in pins, f"{name} is not in deploy/constraints.txt: run deploy/lock.sh"
            assert requirement.specifier.contains(pins[name], prereleases=True), (line, pins[name])
    assert pins["torch"].endswith("+cpu") and "dinotune" not in pins


@pytest.mark.parametrize("script", ["build.sh", "lock.sh"])
def test_scripts_are_executable_bash(script: str) -> None:
    path = DEPLOY / script
    assert path.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(path)], check=True)
