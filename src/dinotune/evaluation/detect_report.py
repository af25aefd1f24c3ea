"""The report a person looks at after evaluating a detector: COCO mAP, AP per class, precision-recall at
IoU 0.5, and the best and worst images drawn (predictions solid, ground truth dashed).

`detection_sections` adds the sections to any `Report` (a training run's report includes them);
`write_detection_report` writes them as a report of their own. Every section is always present; one that
has nothing to show says why.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from dinotune.report.detection_plots import ap_figure, pr_figure
from dinotune.report.html import Report, cards, figure, note, table, trust_banners
from dinotune.report.plots import figure_png

SECTIONS = ("summary", "per-class", "pr-curve", "worst", "best")
COCO_NOTE = (
    "COCO rules: mAP is AP averaged over IoU thresholds 0.50:0.05:0.95 and over classes; AP interpolates "
    "precision at 101 recall levels; up to 100 detections per image; small < 32² <= medium < 96² px² <= large "
    "(box areas in original pixels). '-' means undefined (no ground truth of that kind)."
)


def _tile(path: Path, caption: str, width: int = 300) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure style="margin:0"><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}" '
        f'style="width:{width}px"><figcaption style="font-size:12px;max-width:{width}px">'
        f"{html.escape(caption)}</figcaption></figure>"
    )


def _value(v: float) -> float | None:
    return None if v is None or v < 0 else v


def detection_sections(report: Report, metrics: dict[str, Any], folder: Path, prefix: str = "") -> None:
    """Add the detection sections (ids `prefix` + SECTIONS) to `report`; drawings are read from `folder`."""
    tiles = {
        "mAP": _value(metrics["map"]),
        "mAP@0.5": _value(metrics["map_50"]),
        "mAP@0.75": _value(metrics["map_75"]),
        "mAR@100": _value(metrics["mar_100"]),
        "images": metrics.get("images"),
        "boxes": metrics.get("boxes"),
    }
    by_area = [
        {"area": a, "ap": _value(metrics[f"map_{a}"]), "ar": _value(metrics[f"mar_{a}"])}
        for a in ("small", "medium", "large")
    ]
    matched = metrics.get("matched_at_iou_50", {})
    counts = (
        f"At score >= {metrics.get('score_threshold', 0.5):g} and IoU >= 0.5: {matched.get('tp', 0)} boxes found, "
        f"{matched.get('fp', 0)} false detections, {matched.get('fn', 0)} missed."
    )
    report.add(
        f"{prefix}summary",
        "Summary",
        cards(tiles),
        table(by_area, {"area": "Object size", "ap": "AP", "ar": "AR@100"}),
        note(counts),
        note(COCO_NOTE),
    )
    _per_class(report, metrics, prefix)
    curve = metrics["pr_curve_50"]
    report.add(
        f"{prefix}pr-curve",
        "Precision-recall at IoU 0.5",
        figure(figure_png(pr_figure(curve["recall"], curve["precision"])), "precision-recall curves"),
        note("Precision is COCO's interpolated precision (the best precision at this recall or beyond)."),
    )
    for kind, title in (("worst", "Worst images"), ("best", "Best images")):
        drawn = [d for d in metrics.get("drawings", {}).get(kind, []) if (folder / d["path"]).is_file()]
        tiles = "".join(_tile(folder / d["path"], d["caption"]) for d in drawn)
        body = (
            f'<div style="display:flex;flex-wrap:wrap;gap:12px">{tiles}</div>'
            if drawn
            else note("No drawings were saved.")
        )
        legend = note(
            "Predictions (score >= the threshold) solid with class and score; ground truth dashed. "
            "Ranked by F1 at IoU 0.5."
        )
        report.add(f"{prefix}{kind}", title, legend, body)


def _per_class(report: Report, metrics: dict[str, Any], prefix: str) -> None:
    classes = metrics["classes"]
    rows = [
        {
            "class": name,
            "ap": _value(metrics["ap_per_class"][name]),
            "ap50": _value(metrics["ap50_per_class"][name]),
            "ar": _value(metrics["mar_100_per_class"][name]),
            "boxes": metrics.get("boxes_per_class", {}).get(name),
        }
        for name in classes
    ]
    report.add(
        f"{prefix}per-class",
        "AP per class",
        figure(figure_png(ap_figure(metrics["ap_per_class"], metrics["ap50_per_class"])), "AP per class"),
        table(rows, {"class": "Class", "ap": "AP", "ap50": "AP@0.5", "ar": "AR@100", "boxes": "Boxes"}),
    )


def write_detection_report(
    folder: Path, metrics: dict[str, Any], backbone: dict[str, Any] | None = None, title: str | None = None
) -> Path:
    """`report.html` in `folder`, self-contained (images embedded); `backbone` (the card's) for the banners."""
    report = Report(
        title=title or f"Detection: {folder.name}",
        subtitle=f"{len(metrics['classes'])} classes, {metrics.get('images', 0)} images, "
        f"{metrics.get('boxes', 0)} boxes",
    )
    trust_banners(report, backbone or {}, int(metrics.get("images", 0)))
    detection_sections(report, metrics, folder)
    return report.write(folder / "report.html")
