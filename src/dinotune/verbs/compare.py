"""`dinotune compare RUN...`: every run type side by side (main metric, time, parameters, size)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dinotune.evaluation.compare import compare
from dinotune.verbs.common import Result


def run_compare(runs: Sequence[str | Path], out: str | Path | None = None) -> Result:
    """Rows for `runs` (metrics["rows"]); with `out`, also comparison.json and comparison.html there."""
    rows = compare(runs, out=out)
    return Result(Path(out) if out is not None else Path("."), {"rows": rows})
