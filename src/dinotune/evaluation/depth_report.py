"""The report a person looks at after a depth run: the metrics (with their direction) and previews."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from dinotune.metrics.depth import DIRECTIONS, NAMES
from dinotune.report.html import TINY, Report, cards, model_description, note, table, trust_banners

LABELS = {
    "absrel": "AbsRel",
    "sqrel": "SqRel",
    "rmse": "RMSE (m)",
    "rmse_log": "RMSE log",
    "log10": "log10",
    "delta1": "δ < 1.25",
    "delta2": "δ < 1.25²",
    "delta3": "δ < 1.25³",
}


def _preview(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure style="margin:0"><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
        f'<figcaption style="font-size:12px">{html.escape(path.stem)}</figcaption></figure>'
    )


def write_depth_report(run_dir: Path, metrics: dict[str, Any], backbone: dict[str, Any] | None = None) -> Path:
    """`report.html` in `run_dir`, self-contained (previews embedded)."""
    split = metrics["report_split"]
    result = metrics.get(split, {})
    depth = metrics.get("depth", {})
    report = Report(
        title=f"Depth: {Path(metrics.get('run') or run_dir).name}",  # evaluate writes into a temporary folder
        subtitle=f"{model_description(metrics)}, split '{split}', "
        f"depth {depth.get('min_depth', '?')}..{depth.get('max_depth', '?')} m",
    )
    trust_banners(report, backbone or {}, int(result.get("images", TINY)))
    rows = [
        {"metric": LABELS[n], "value": result.get(n), "better": "higher" if DIRECTIONS[n] == "max" else "lower"}
        for n in NAMES
    ]
    report.add(
        "summary",
        "Summary",
        cards(metrics["summary"]),
        table(rows, {"metric": "Metric", "value": "Value", "better": "Better"}, digits=4),
        note(
            "Per image on its valid pixels (finite, inside the depth range), then averaged over "
            f"{result.get('images', 0)} images (NYU/KITTI convention); predictions clamped to the range."
        ),
    )
    previews = sorted((run_dir / "predictions" / "previews").glob("*.png"))
    if previews:
        report.add(
            "predictions",
            "Predictions",
            note(
                "image | ground truth | prediction | |error| - the two depth "
                "panels share one colour scale; grey: no ground truth."
            ),
            *(_preview(p) for p in previews),
        )
    else:
        report.add("predictions", "Predictions", note("No previews were saved (save_predictions=false)."))
    return report.write(run_dir / "report.html")
