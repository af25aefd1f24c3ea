"""Report figures (matplotlib, Agg): every function takes plain arrays and returns a Figure.

Figures are meant for people: titles, axis labels, class names, and sizes that grow with the number of
classes. Long class lists are handled by hiding per-value annotations (> 20 classes) and per-class
curve legends (> 12 classes) rather than by drawing an unreadable plot.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from dinotune.report.html import percent

__all__ = [
    "compare_figure",
    "confusion_matrix_figure",
    "feature_view_figure",
    "figure_png",
    "iou_figure",
    "mistakes_figure",
    "ood_figure",
    "patch_pca_figure",
    "reliability_figure",
    "robustness_figure",
    "roc_pr_figure",
    "segmentation_overlay_figure",
    "training_curves_figure",
]

MAX_ANNOTATED = 20
MAX_LEGEND = 12


def figure_png(fig: Figure, dpi: int = 90) -> bytes:
    """PNG bytes of `fig`; the figure is closed so long evaluations do not accumulate memory."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix: each row (true class) sums to 1, so rare classes stay visible."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    c = len(class_names)
    side = min(max(4.5, 0.45 * c + 2.5), 16)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    names = [_short(n) for n in class_names]
    ax.set_xticks(range(c), names, rotation=45 if c > 4 else 0, ha="right" if c > 4 else "center")
    ax.set_yticks(range(c), names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title("Confusion matrix (normalised by true class)")
    if c <= MAX_ANNOTATED:
        for i in range(c):
            for j in range(c):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    return fig


def _macro(xs: list[np.ndarray], ys: list[np.ndarray], grid: np.ndarray) -> np.ndarray:
    """Mean of curves interpolated on a common grid (x must increase)."""
    return np.mean([np.interp(grid, x, y) for x, y in zip(xs, ys, strict=True)], axis=0)


def roc_pr_figure(probs: np.ndarray, onehot: np.ndarray, class_names: Sequence[str]) -> Figure:
    """ROC and precision-recall curves one-vs-rest per class, plus micro and macro averages.

    Classes without positives or without negatives have no curve and are left out of the averages.
    """
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(12, 5.2))
    ok = [k for k in range(onehot.shape[1]) if 0 < onehot[:, k].sum() < len(onehot)]
    show_legend = len(ok) <= MAX_LEGEND
    colours = plt.get_cmap("tab20" if len(ok) > 10 else "tab10")
    roc_x, roc_y, pr_x, pr_y = [], [], [], []
    for n, k in enumerate(ok):
        fpr, tpr, _ = roc_curve(onehot[:, k], probs[:, k])
        precision, recall, _ = precision_recall_curve(onehot[:, k], probs[:, k])
        roc_x.append(fpr), roc_y.append(tpr), pr_x.append(recall[::-1]), pr_y.append(precision[::-1])
        colour = colours(n % colours.N)
        ax_roc.plot(fpr, tpr, lw=1, alpha=0.7, color=colour, label=f"{_short(class_names[k])} ({auc(fpr, tpr):.2f})")
        ax_pr.plot(recall, precision, lw=1, alpha=0.7, color=colour, label=_short(class_names[k]))
    if ok:
        fpr, tpr, _ = roc_curve(onehot[:, ok].ravel(), probs[:, ok].ravel())
        ax_roc.plot(fpr, tpr, "k-", lw=2.2, label=f"micro average ({auc(fpr, tpr):.2f})")
        grid = np.linspace(0, 1, 201)
        macro_tpr = _macro(roc_x, roc_y, grid)
        ax_roc.plot(grid, macro_tpr, "k--", lw=2.2, label=f"macro average ({auc(grid, macro_tpr):.2f})")
        precision, recall, _ = precision_recall_curve(onehot[:, ok].ravel(), probs[:, ok].ravel())
        ax_pr.plot(recall, precision, "k-", lw=2.2, label="micro average")
        ax_pr.plot(grid, _macro(pr_x, pr_y, grid), "k--", lw=2.2, label="macro average")
    ax_roc.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    for ax, title, xl, yl in (
        (ax_roc, "ROC curves (one vs rest, AUC in brackets)", "False positive rate", "True positive rate"),
        (ax_pr, "Precision-recall curves", "Recall", "Precision"),
    ):
        ax.set(title=title, xlabel=xl, ylabel=yl, xlim=(-0.01, 1.01), ylim=(-0.01, 1.02))
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if not show_legend:  # only the averages
            keep = [i for i, lab in enumerate(labels) if "average" in lab]
            handles, labels = [handles[i] for i in keep], [labels[i] for i in keep]
        ax.legend(handles, labels, fontsize=7.5, loc="lower right" if ax is ax_roc else "lower left")
    fig.tight_layout()
    return fig


def reliability_figure(before: Any, after: Any | None = None, temperature: float | None = None) -> Figure:
    """Accuracy per confidence bin against the diagonal (perfect calibration), with bin counts below.

    `before` / `after`: binned statistics with `edges`, `accuracy`, `confidence`, `counts` and `ece`
    (an `evaluation.calibration.Reliability`; plots stay below evaluation in the import layers)."""
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(6, 6.2), height_ratios=(3, 1), sharex=True)
    centres = (before.edges[:-1] + before.edges[1:]) / 2
    width = before.edges[1] - before.edges[0]
    ax.bar(
        centres,
        np.nan_to_num(before.accuracy),
        width=width * 0.95,
        color="#4c78a8",
        edgecolor="white",
        label=f"accuracy per bin (ECE {before.ece:.3f})",
    )
    gap_low = np.minimum(np.nan_to_num(before.accuracy), np.nan_to_num(before.confidence))
    gap = np.abs(np.nan_to_num(before.accuracy) - np.nan_to_num(before.confidence))
    ax.bar(centres, gap, bottom=gap_low, width=width * 0.95, color="#e45756", alpha=0.35, label="gap to confidence")
    if after is not None:
        ax.plot(
            centres,
            after.accuracy,
            "o-",
            color="#f58518",
            label=f"after temperature scaling, T={temperature:.2f} (ECE {after.ece:.3f})",
        )
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    ax.set(ylabel="Accuracy", title="Reliability diagram (15 equal-width bins)", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=8, loc="upper left")
    ax_n.bar(centres, before.counts, width=width * 0.95, color="grey")
    ax_n.set(xlabel="Confidence (top-class probability)", ylabel="Images")
    fig.tight_layout()
    return fig


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """HxWxC [0, 1] -> something imshow draws: grey for 1 channel, the first 3 bands for N > 3."""
    image = np.clip(image, 0, 1)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0], "gray"
    return (image[:, :, :3] if image.ndim == 3 else image), ("gray" if image.ndim == 2 else None)


def mistakes_figure(
    images: Sequence[np.ndarray],
    true: Sequence[str],
    predicted: Sequence[str],
    confidence: Sequence[float],
    columns: int = 6,
) -> Figure:
    """The most confident wrong predictions: each tile titled with true and predicted class."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, t, p, c in zip(axes.ravel(), images, true, predicted, confidence, strict=False):
        shown, cmap = _display(image)
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(f"true: {_short(t, 14)}\npred: {_short(p, 14)} ({percent(c)})", fontsize=8.5, color="#b00020")
    fig.suptitle("Most confident mistakes", fontsize=12)
    fig.tight_layout()
    return fig


def _curve_panels(curves: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Curves that share units share an axis (all losses; all learning rates); every other metric has its own."""
    losses = {k: v for k, v in curves.items() if "loss" in k.lower()}
    rates = {k: v for k, v in curves.items() if "lr" in re.split(r"[/_.-]", k.lower())}
    panels = [("Loss", losses)] if losses else []
    panels += [(name, {name: v}) for name, v in curves.items() if name not in losses and name not in rates]
    return panels + ([("Learning rate", rates)] if rates else [])


def training_curves_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], x_label: str = "epoch", resumed_at: Sequence[float] = ()
) -> Figure:
    """Training curves {name: (x, y)}, each quantity on its own axis (learning rates never share the accuracy
    axis); dotted lines mark where the run was resumed."""
    panels = _curve_panels(curves)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, panel) in zip(axes.flat, panels, strict=False):
        for name, (x, y) in panel.items():
            ax.plot(x, y, marker="o" if len(x) < 30 else None, ms=3, label=name)
        for step in resumed_at:
            ax.axvline(step, color="0.5", ls=":", lw=1.2)
        ax.set_title(title, fontsize=12)
        ax.set_xlabel(x_label, fontsize=10)
        if title == "Learning rate" and all(np.all(np.asarray(y) > 0) for _, y in panel.values()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(panel) > 1:
            ax.legend(fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def feature_view_figure(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], method: str) -> Figure:
    """2-D embedding of the pooled features, one colour per true class."""
    fig, ax = plt.subplots(figsize=(7, 5.8))
    cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for k, name in enumerate(class_names):
        sel = labels == k
        if sel.any():
            ax.scatter(points[sel, 0], points[sel, 1], s=10, alpha=0.75, color=cmap(k % cmap.N), label=_short(name))
    ax.set(title=f"Feature space ({method}), coloured by true class", xlabel=f"{method} 1", ylabel=f"{method} 2")
    ax.grid(alpha=0.3)
    if len(class_names) <= 2 * MAX_LEGEND:
        ax.legend(fontsize=8, markerscale=2, loc="center left", bbox_to_anchor=(1.01, 0.5), title="class")
    fig.tight_layout()
    return fig


def patch_pca_figure(images: Sequence[np.ndarray], pca_maps: Sequence[np.ndarray], titles: Sequence[str]) -> Figure:
    """Each image next to the first 3 PCA components of its patch features shown as RGB."""
    n = len(images)
    columns = min(n, 4)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(2.2 * 2 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (image, pca, title) in enumerate(zip(images, pca_maps, titles, strict=True)):
        r, c = divmod(i, columns)
        shown, cmap = _display(image)
        axes[r, 2 * c].imshow(shown, cmap=cmap, vmin=0, vmax=1)
        axes[r, 2 * c].set_title(_short(title, 16), fontsize=11)
        axes[r, 2 * c + 1].imshow(pca, interpolation="nearest")
        axes[r, 2 * c + 1].set_title("patch PCA", fontsize=11)
    fig.suptitle("Patch features: first 3 principal components as RGB", fontsize=14)
    fig.tight_layout()
    return fig


def robustness_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Accuracy relative to clean (1.0 = unaffected) against severity, one line per corruption."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    names = list(dict.fromkeys(r["corruption"] for r in rows))
    for name in names:
        mine = [r for r in rows if r["corruption"] == name and r["relative"] is not None]
        ax.plot([0] + [r["severity"] for r in mine], [1.0] + [r["relative"] for r in mine], "o-", label=name)
    ax.axhline(1.0, color="grey", lw=1, ls=":")
    ax.set(
        title="Robustness to common corruptions",
        xlabel="Severity (0 = clean)",
        ylabel="Accuracy relative to clean",
        xticks=range(0, 6),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def ood_figure(scores: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Histograms of in-distribution vs OOD scores for each method {name: (id, ood)}."""
    fig, axes = plt.subplots(1, len(scores), figsize=(4.3 * len(scores), 3.6), squeeze=False)
    for ax, (name, (id_scores, ood_scores)) in zip(axes[0], scores.items(), strict=True):
        bins = np.histogram_bin_edges(np.concatenate([id_scores, ood_scores]), bins=30)
        ax.hist(id_scores, bins=bins, alpha=0.6, density=True, label="in-distribution")
        ax.hist(ood_scores, bins=bins, alpha=0.6, density=True, label="OOD")
        ax.set(title=name, xlabel="score (higher = more out-of-distribution)", ylabel="density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compare_figure(runs: Sequence[str], metrics: Mapping[str, Sequence[float | None]]) -> Figure:
    """Grouped bars: one group per metric, one bar per run in a colour of its own, its value on top."""
    colours = plt.get_cmap("tab20" if len(runs) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(metrics) * max(2, len(runs)) / 2 + 2), 4.8))
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        values = [metrics[m][i] for m in metrics]
        xs = [j + i * width for j, v in enumerate(values) if v is not None]
        shown = [v for v in values if v is not None]
        bars = ax.bar(xs, shown, width=width, label=_short(run, 30), color=colours(i % colours.N))
        if len(runs) * len(metrics) <= 24:
            ax.bar_label(bars, labels=[f"{v:.3f}" for v in shown], fontsize=9, padding=2)
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(metrics))], list(metrics), fontsize=12)
    ax.tick_params(axis="y", labelsize=11)
    ax.set_title("Runs compared", fontsize=14)
    ax.set_ylabel("value", fontsize=12)
    ax.set_ylim(0, 1.12)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=11, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def iou_figure(ious: Sequence[float | None], class_names: Sequence[str]) -> Figure:
    """Per-class intersection-over-union bars (segmentation); classes absent everywhere show as '-'."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(class_names) + 2), 4))
    values = [np.nan if v is None else v for v in ious]
    ax.bar(range(len(values)), np.nan_to_num(values), color="#54a24b")
    for i, v in enumerate(values):
        ax.text(i, (0 if np.isnan(v) else v) + 0.01, "-" if np.isnan(v) else f"{v:.2f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(values)), [_short(n) for n in class_names], rotation=45, ha="right")
    mean = np.nanmean(values) if not np.all(np.isnan(values)) else float("nan")
    ax.set(title=f"Per-class IoU (mean {mean:.3f})", ylabel="IoU", ylim=(0, 1.08))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def segmentation_overlay_figure(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    colours: np.ndarray,
    ignore_index: int = 255,
    alpha: float = 0.5,
) -> Figure:
    """Rows of image | ground truth overlay | prediction overlay; `colours` is (C, 3) uint8."""
    palette = np.asarray(colours, dtype=np.float64) / 255.0

    def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        base, _ = _display(image)
        base = np.repeat(base[:, :, None], 3, axis=2) if base.ndim == 2 else base
        valid = (mask != ignore_index) & (mask < len(palette))
        out = base.copy()
        out[valid] = (1 - alpha) * base[valid] + alpha * palette[mask[valid]]
        return out

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for row, (image, truth, pred) in enumerate(zip(images, truths, predictions, strict=True)):
        for ax, shown, title in zip(
            axes[row],
            (_display(image)[0], overlay(image, truth), overlay(image, pred)),
            ("image", "ground truth", "prediction"),
            strict=True,
        ):
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    return fig
