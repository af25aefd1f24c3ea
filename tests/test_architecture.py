"""The shape of the code, checked: imports flow one way with no cycles, modules and functions stay small,
and nothing outside `dinotune.backbones` reaches into a backbone's Hugging Face internals."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[1] / "src" / "dinotune"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
LONGER_ALLOWED = {"create_app"}  # the HTTP route table reads best in one place


def test_import_layers_contract_is_kept() -> None:
    """The contract in pyproject.toml ([tool.importlinter]): cli -> verbs -> ... -> building blocks."""
    script = Path(sys.executable).with_name("lint-imports")  # import-linter's console script (a dev dependency)
    result = subprocess.run([str(script), "--no-cache"], capture_output=True, text=True, cwd=SRC.parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_no_import_cycles_between_modules() -> None:
    graph = grimp.build_graph("dinotune")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_modules_and_functions_are_small() -> None:
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in LONGER_ALLOWED:
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def test_backbone_internals_stay_inside_backbones() -> None:
    """Training, export and serving use the Backbone interface (freeze, layer_id, save_pretrained, ...)."""
    pattern = re.compile(r"\.hf\b|isinstance\([^)]*(ViTBackbone|ConvNeXtBackbone)")
    found = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        if "backbones" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
