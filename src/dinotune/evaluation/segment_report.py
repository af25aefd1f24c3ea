"""The report a person looks at after a segmentation run: mIoU, per-class IoU, predictions over images."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from dinotune.report.html import TINY, Report, cards, figure, model_description, note, table, trust_banners
from dinotune.report.plots import figure_png, iou_figure


def _tile(path: Path, width: int = 192) -> str:
    """An overlay scaled to a readable size; small masks stay crisp (no smoothing)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure style="margin:0"><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}" '
        f'style="width:{width}px;image-rendering:pixelated"><figcaption style="font-size:12px">'
        f"{html.escape(path.stem)}</figcaption></figure>"
    )


def write_segmentation_report(
    run_dir: Path, metrics: dict[str, Any], max_overlays: int = 6, backbone: dict[str, Any] | None = None
) -> Path:
    """`report.html` in the run folder, self-contained (images embedded); `backbone` (the card's) for the
    random-weights banner."""
    classes: list[str] = metrics["classes"]
    split = metrics["report_split"]
    result = metrics.get(split, {})
    report = Report(
        title=f"Segmentation: {Path(metrics.get('run') or run_dir).name}",  # evaluate writes into a temporary folder
        subtitle=f"{model_description(metrics)}, {len(classes)} classes, split '{split}'",
    )
    trust_banners(report, backbone or {}, int(result.get("images", TINY)))
    report.add(
        "summary",
        "Summary",
        cards(metrics["summary"]),
        note(
            "IoU = TP / (TP + FP + FN) over all pixels of the split, ignore pixels excluded; classes absent "
            "from both prediction and ground truth are left out of the mean."
        ),
    )
    if result:
        rows = [{"class": name, "iou": iou} for name, iou in zip(classes, result["iou"], strict=True)]
        report.add(
            "per-class",
            "Per-class IoU",
            figure(figure_png(iou_figure(result["iou"], classes)), "IoU bars"),
            table(rows, {"class": "Class", "iou": "IoU"}),
        )
    overlays = sorted((run_dir / "predictions" / "overlays").glob("*.png"))[:max_overlays]
    if overlays:
        tiles = "".join(_tile(path) for path in overlays)
        report.add(
            "predictions",
            "Predictions",
            note("Predicted classes over the image (colours of the class map)."),
            f'<div style="display:flex;flex-wrap:wrap;gap:12px">{tiles}</div>',
        )
    else:
        report.add("predictions", "Predictions", note("No prediction overlays were saved (save_predictions=false)."))
    return report.write(run_dir / "report.html")
