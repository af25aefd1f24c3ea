"""`compare` reads each run's recorded values and shows what is missing as '-'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinotune.errors import DataError
from dinotune.evaluation.compare import compare, format_table, read_run


def _probe_like_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(
        json.dumps({"backbone": {"arch": "vit_test16"}, "head": {"file": "head.st"}, "metrics": {"test/accuracy": 0.5}})
    )
    (folder / "head.st").write_bytes(b"x" * 2_000_000)
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "report_split": "test",
                "seconds": 12.5,
                "probe": {"summary": {}, "test": {"accuracy": 0.8, "balanced_accuracy": 0.75, "f1_macro": 0.7}},
            }
        )
    )
    return folder


def test_compare_reads_evaluation_then_run_metrics(tmp_path: Path) -> None:
    a = _probe_like_run(tmp_path / "a")
    b = _probe_like_run(tmp_path / "b")
    (b / "evaluation").mkdir()
    (b / "evaluation" / "metrics.json").write_text(json.dumps({"summary": {"accuracy": 0.9, "ece": 0.05}}))
    c = tmp_path / "c"
    c.mkdir()  # a folder with nothing recorded (e.g. a dataset passed by mistake): one clear error
    with pytest.raises(DataError, match="not a run folder"):
        compare([a, c])
    rows = compare([a, b], out=tmp_path / "cmp")
    assert rows[0]["accuracy"] == 0.8 and rows[0]["f1_macro"] == 0.7 and rows[0]["ece"] is None
    assert rows[1]["accuracy"] == 0.9 and rows[1]["ece"] == 0.05 and rows[1]["balanced_accuracy"] == 0.75
    assert rows[0]["train_seconds"] == 12.5 and rows[0]["model_mb"] == pytest.approx(2.0, abs=0.01)
    assert rows[0]["backbone"] == "vit_test16"
    text = format_table(rows)
    assert text.splitlines()[0].split()[:2] == ["Run", "Backbone"]
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "data:image/png;base64," in html and json.loads((tmp_path / "cmp" / "comparison.json").read_text())


def test_card_metrics_are_the_last_resort(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"backbone": {"source": "x"}, "metrics": {"test/accuracy": 0.61}}))
    assert read_run(run)["accuracy"] == 0.61
