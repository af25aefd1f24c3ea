"""The data, metric and evaluation examples of docs/detection.md run, in order in one namespace, and print what the
page says they print; its `data check` command runs too (on the dataset the first example generates)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dinotune.cli_data import data_app

PAGE = Path(__file__).resolve().parents[2] / "docs" / "detection.md"


def test_detection_page_examples_run_and_print_what_they_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = PAGE.read_text()
    every = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    needles = ("check_dataset(root", "detection_metrics(found", "evaluate_detections(colour_blobs")
    blocks = [next(code for code in every if needle in code) for needle in needles]  # the data side's examples
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for code in blocks:
            exec(compile(code, str(PAGE), "exec"), namespace)
    promised = [m.group(1) for code in blocks for m in re.finditer(r"print\(.*\)\s+# (.+)$", code, flags=re.M)]
    promised += re.findall(r"^# (True \[.*\])$", blocks[2], flags=re.M)
    lines = printed.getvalue().splitlines()
    assert lines[0] == promised[0] and lines[1] == promised[1] and lines[3] == promised[2] and lines[4] == promised[3]
    assert lines[2].startswith("torch.Size([2, 3, 96, 96]) True")
    assert (tmp_path / "shapes_eval" / "report.html").is_file()
    command = re.findall(r"^dinotune (data check .+ --task detect)$", text, flags=re.M)[0]
    args = command.split()[1:]
    args[1] = str(tmp_path / "shapes")
    result = CliRunner().invoke(data_app, args)
    assert result.exit_code == 0 and "layout yolo, task detect" in result.output, result.output
