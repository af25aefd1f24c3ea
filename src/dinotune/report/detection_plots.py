"""Detection report figures (matplotlib, Agg): AP per class as bars, precision-recall curves at IoU 0.5.

Values of -1 (COCO's "undefined": a class without ground truth) are shown as '-' and left out of curves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from dinotune.report.boxes import class_colour

MAX_LEGEND = 12


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def ap_figure(ap: Mapping[str, float], ap50: Mapping[str, float] | None = None) -> Figure:
    """Bars of AP (IoU 0.50:0.95) per class, with AP at IoU 0.5 as lighter bars behind when given."""
    names = list(ap)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4))
    x = np.arange(len(names))
    values = np.array([np.nan if ap[n] < 0 else ap[n] for n in names])
    if ap50 is not None:
        behind = np.array([np.nan if ap50[n] < 0 else ap50[n] for n in names])
        ax.bar(x, np.nan_to_num(behind), color="#b9d3ee", label="AP@0.5")
    ax.bar(x, np.nan_to_num(values), width=0.55, color="#2f6db5", label="AP@[0.5:0.95]")
    for i, v in enumerate(values):
        ax.text(i, (0 if np.isnan(v) else v) + 0.01, "-" if np.isnan(v) else f"{v:.2f}", ha="center", fontsize=8)
    ax.set_xticks(
        x, [_short(n) for n in names], rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center"
    )
    mean = np.nanmean(values) if not np.all(np.isnan(values)) else float("nan")
    ax.set(title=f"AP per class (mAP {mean:.3f})", ylabel="average precision", ylim=(0, 1.08))
    ax.grid(axis="y", alpha=0.3)
    if ap50 is not None:
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def pr_figure(recall: Sequence[float], precision: Mapping[str, Sequence[float]]) -> Figure:
    """COCO's interpolated precision at each recall level (IoU 0.5), one line per class with ground truth."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    r = np.asarray(recall)
    shown = 0
    for k, (name, values) in enumerate(precision.items()):
        p = np.asarray(values, dtype=float)
        if np.all(p < 0):
            continue
        ax.plot(r, np.where(p < 0, np.nan, p), color=np.asarray(class_colour(k)) / 255, lw=1.8, label=_short(name))
        shown += 1
    ax.set(title="Precision-recall at IoU 0.5", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    if 0 < shown <= MAX_LEGEND:
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
