"""The public API: every name in `dinotune.__all__` resolves, and the lazy table matches the explicit
TYPE_CHECKING imports, so readers and type checkers see exactly what users get."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dinotune


def test_every_public_name_resolves() -> None:
    for name in dinotune.__all__:
        assert getattr(dinotune, name) is not None, name


def test_the_lazy_table_matches_the_explicit_imports() -> None:
    tree = ast.parse(Path(dinotune.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    explicit = {(node.module, alias.name) for node in block.body for alias in node.names}  # type: ignore[attr-defined]
    lazy = {(module, name) for module, names in dinotune._PUBLIC.items() for name in names}
    assert explicit == lazy


def test_importing_dinotune_does_not_load_torch() -> None:
    """`import dinotune` and the CLI's --help stay fast: the heavy libraries load with the verb that needs them."""
    code = "import sys, dinotune, dinotune.cli; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_all_lists_exactly_the_public_names() -> None:
    lazy = {name for names in dinotune._PUBLIC.values() for name in names}
    assert set(dinotune.__all__) == lazy | {"__version__"}
