"""Every Python example in the docs parses, and every dinotune name it imports exists (the README's
example also runs, in test_readme.py; the docs' full examples are exercised by the tests they name)."""

from __future__ import annotations

import ast
import importlib
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_import_what_exists(page: Path) -> None:
    for code in _blocks(page):
        tree = ast.parse(code)  # a syntax error fails here
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dinotune"):
                module = importlib.import_module(node.module)  # type: ignore[arg-type]
                for alias in node.names:
                    value = getattr(module, alias.name, None)  # a submodule is an attribute too: not a name
                    assert value is not None and not isinstance(value, types.ModuleType), (
                        f"{page.name}: {node.module} has no {alias.name}"
                    )
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("dinotune"):
                        importlib.import_module(alias.name)
