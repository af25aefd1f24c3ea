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
