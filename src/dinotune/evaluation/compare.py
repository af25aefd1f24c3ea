"""`dinotune compare RUN1 RUN2 ...`: the main metrics, training time and model size of runs side by side.

Values are read, never recomputed, from the run's own `metrics.json` (the report split of a probe, kNN,
fine-tuning or segmentation run: every run type writes `task`, `summary`, `report_split`, `parameters`
and `train_seconds`), overridden by `<run>/evaluation/metrics.json` when `evaluate` wrote one; the
metrics in `model.json` are the last resort. A value no source has is shown as "-". Model size counts the files a model
folder itself holds (model.json, head, a saved `backbone/`); a frozen backbone is named, not copied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dinotune.atomic import write_text
from dinotune.errors import DataError
from dinotune.report import plots
from dinotune.report.html import Report, figure, fmt, note, table

__all__ = ["COLUMNS", "compare", "format_table", "read_run"]

COLUMNS = {
    "run": "Run",
    "task": "Task",
    "backbone": "Backbone",
    "metric": "Main metric",
    "value": "Value",
    "better": "Better",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced acc.",
    "f1_macro": "Macro F1",
    "auroc": "AUROC",
    "map": "mAP",
    "miou": "mIoU",
    "absrel": "AbsRel",
    "delta1": "δ<1.25",
    "ece": "ECE",
    "train_seconds": "Training time (s)",
    "trainable": "Trainable params",
    "total": "Total params",
    "model_mb": "Model size (MB)",
}
METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "map", "miou", "ece", "absrel", "delta1")
MAIN_METRIC = {"classify": "accuracy", "multilabel": "map", "segment": "miou", "depth": "absrel", "detect": "map"}
LOWER_IS_BETTER = {"ece", "absrel"}  # the main metrics and columns where a smaller value wins


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _size_mb(paths: Sequence[Path]) -> float | None:
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total / 1e6 if total else None


def _split_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The report split's metrics, unprefixed, from any run's or evaluation's metrics.json."""
    split = metrics.get("report_split", "test")
    found: dict[str, Any] = {}
    for source in (metrics.get("probe", {}), metrics):
        detail = source.get(split)
        if isinstance(detail, dict):
            found |= {k: v for k, v in detail.items() if isinstance(v, (int, float))}
    summary = metrics.get("summary", {})
    found |= {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith(f"{split}/")}
    found |= {k: v for k, v in summary.items() if "/" not in k and isinstance(v, (int, float))}
    return found


def read_run(run: str | Path) -> dict[str, Any]:
    """One comparison row for `run` (any run type); keys of COLUMNS, None where unknown."""
    run = Path(run)
    if not run.is_dir() or not ((run / "metrics.json").is_file() or (run / "model.json").is_file()):
        raise DataError(
            f"'{run}' is not a run folder (no metrics.json or model.json); pass folders written by probe, knn or train."
        )
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    card = _json(run / "model.json")
    exported = card.get("head", {}).get("type") == "onnx"
    row["run"] = f"{run.parent.name}/{run.name}" if exported else run.name  # an export is named by its run
    trained = _json(run / "metrics.json")
    row["task"] = trained.get("task") or card.get("task")
    scores = sorted((k, v) for k, v in card.get("metrics", {}).items() if "/" in k and isinstance(v, (int, float)))
    from_card = {k.split("/", 1)[1]: v for k, v in sorted(scores, key=lambda kv: kv[0].startswith("test/"))}
    found = from_card | _split_metrics(trained) | _split_metrics(_json(run / "evaluation" / "metrics.json"))
    for key in METRICS:
        if isinstance(found.get(key), (int, float)):
            row[key] = float(found[key])
    row["metric"] = MAIN_METRIC.get(row["task"] or "")
    row["value"] = row.get(row["metric"]) if row["metric"] else None
    if row["metric"] in LOWER_IS_BETTER:  # said only where it is not the usual "higher"
        row["better"] = "lower"
    seconds = next((trained[k] for k in ("train_seconds", "seconds") if isinstance(trained.get(k), (int, float))), None)
    row["train_seconds"] = float(seconds) if seconds is not None else None
    params = trained.get("parameters", {})
    row["trainable"], row["total"] = params.get("trainable"), params.get("total")
    backbone = card.get("backbone", {})
    row["backbone"] = backbone.get("arch") or backbone.get("source")
    files = [run / "model.json", run / card.get("head", {}).get("file", "head.safetensors")]
    if backbone.get("weights_dir"):
        files.append(run / backbone["weights_dir"])
    row["model_mb"] = _size_mb(files) if card else None
    return row


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table for the terminal; columns nobody has are dropped, missing cells are '-'."""
    keys = [k for k in COLUMNS if any(r.get(k) is not None for r in rows)]
    cells = [[COLUMNS[k] for k in keys]] + [[fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def compare(runs: Sequence[str | Path], *, out: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of `read_run` for every run; with `out`, also writes comparison.json and comparison.html there."""
    if not runs:
        raise DataError("compare needs at least one run folder.")
    rows = [read_run(r) for r in runs]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "comparison.json", json.dumps(rows, indent=2))
        shown = [
            m
            for m in ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "map", "miou")
            if any(r[m] is not None for r in rows)
        ]
        report = Report("Run comparison", f"{len(rows)} runs")
        body = [table(rows, {k: v for k, v in COLUMNS.items() if any(r.get(k) is not None for r in rows)})]
        if shown:
            fig = plots.compare_figure([r["run"] for r in rows], {COLUMNS[m]: [r[m] for r in rows] for m in shown})
            body.append(figure(plots.figure_png(fig), "runs compared", 900))
        body.append(
            note(
                "Metrics from <run>/evaluation/metrics.json, else the run's metrics.json (its report "
                "split), else model.json; '-' = not recorded. Model size: files in the model folder."
            )
        )
        report.add("comparison", "Comparison", *body)
        report.write(out / "comparison.html")
    return rows
