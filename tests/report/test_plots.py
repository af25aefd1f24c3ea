"""Figures for parts not wired into the report yet (segmentation) and the HTML building blocks."""

from __future__ import annotations

import numpy as np

from dinotune.report import plots
from dinotune.report.html import Report, figure, fmt, table


def test_segmentation_figures_render() -> None:
    rng = np.random.default_rng(0)
    iou = plots.iou_figure([0.8, None, 0.35], ["background", "crack", "finger"])
    assert iou.axes[0].get_title() == "Per-class IoU (mean 0.575)"
    assert plots.figure_png(iou).startswith(b"\x89PNG")
    image = rng.random((16, 16, 3))
    truth = rng.integers(0, 3, (16, 16))
    pred = truth.copy()
    pred[:4] = 255  # ignored pixels are drawn without colour
    fig = plots.segmentation_overlay_figure([image], [truth], [pred], np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]]))
    assert [ax.get_title() for ax in fig.axes] == ["image", "ground truth", "prediction"]
    plots.figure_png(fig)


def test_html_table_and_figure_escape_and_embed() -> None:
    assert fmt(None) == "-" and fmt(float("nan")) == "-" and fmt(0.12345) == "0.123"
    html = table([{"a": "<b>", "b": 1.0}, {"a": "x"}], {"a": "A", "b": "B"})
    assert "&lt;b&gt;" in html and "<td>-</td>" in html
    report = Report("t")
    report.add("s", "S", figure(b"\x89PNG", "alt"))
    assert 'src="data:image/png;base64,iVBORw==' in report.render()


def test_percentages_never_round_to_a_misleading_0_or_100() -> None:
    from dinotune.report.html import percent

    assert percent(0.9975) == "99.8%" and percent(0.99999) == "99.999%" and percent(0.004) == "0.4%"
    assert percent(1.0) == "100%" and percent(0.0) == "0%" and percent(0.5) == "50%"


def test_comparison_chart_is_readable_with_a_colour_per_run() -> None:
    runs = [f"runs/run{i}" for i in range(12)]
    fig = plots.compare_figure(runs, {"Accuracy": [0.5 + i / 30 for i in range(12)], "AUROC": [0.9] * 12})
    ax = fig.axes[0]
    colours = [tuple(patch.get_facecolor()) for patch in ax.get_legend().get_patches()]
    assert len(set(colours)) == 12  # tab10 repeated colours after 10 runs; these never repeat
    assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 10
    assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 10
    plots.figure_png(fig)


def test_reports_carry_a_banner_for_random_weights_and_tiny_data(tmp_path) -> None:
    from dinotune.evaluation.segment_report import write_segmentation_report
    from dinotune.report.html import trust_banners

    metrics = {"classes": ["bg", "cell"], "report_split": "val", "summary": {"val/miou": 0.5},
               "val": {"iou": [0.9, 0.1], "images": 12}}  # fmt: skip
    text = write_segmentation_report(tmp_path, metrics, backbone={"source": "random:vit_test16"}).read_text()
    assert "RANDOM WEIGHTS." in text and "Only 12 images were evaluated" in text
    assert text.index('class="banner"') < text.index("<nav>")
    real = Report("t")
    trust_banners(real, {"source": "facebook/dinov3-vits16-pretrain-lvd1689m"}, images=5000, accuracy=0.9)
    assert real.banners == []
    small = Report("t")
    trust_banners(small, {"source": "x"}, images=40, accuracy=0.5)
    assert "±0.15 (95%)" in small.render()  # 1.96 * sqrt(0.25 / 40)
