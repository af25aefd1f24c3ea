"""`dinotune export MODEL`: an ONNX export folder, verified against PyTorch (and int8 against fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dinotune.export.onnx import export_model
from dinotune.verbs.common import Result


def run_export(run: str | Path, out: str | Path | None = None, **options: Any) -> Result:
    """Export the model in `run` to `out` (default RUN/export); `options` are `export_model`'s."""
    out_dir = Path(out) if out is not None else Path(run) / "export"
    report = export_model(run, out_dir, **options)
    return Result(out_dir, report)
