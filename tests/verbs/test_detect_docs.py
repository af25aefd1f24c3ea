"""The training, evaluate, predict, compare and export commands of docs/detection.md run as written (train
with one epoch instead of twelve) on the YOLO shapes dataset the page's first example generates."""

from __future__ import annotations

import json
import re
import shlex
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dinotune.cli import app
from tests.detection_fixtures import make_shapes_dataset

PAGE = Path(__file__).resolve().parents[2] / "docs" / "detection.md"
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # ~30 s: train, evaluate, export


def test_documented_detection_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = PAGE.read_text()[PAGE.read_text().index("## Training a detector") :]
    commands = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()
                if line.startswith("dinotune ") and not line.startswith("dinotune serve")]  # fmt: skip
    assert [c.split()[1] for c in commands] == ["train", "evaluate", "predict", "compare", "export"]
    monkeypatch.chdir(tmp_path)
    Path("configs").symlink_to(PAGE.parents[1] / "configs")  # the commands name the repository's configs
    make_shapes_dataset(Path("shapes"), 24, 8, 8, layout="yolo")
    outputs = []
    for command in commands:
        args = shlex.split(command)[1:] + (["trainer.max_epochs=1", "data.num_workers=0"] if "train" in command else [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (command, result.output)
        outputs.append(result.output)
    summary = json.loads((tmp_path / "runs" / "shapes" / "metrics.json").read_text())["summary"]
    assert "test/map" in summary and "wrote runs/shapes/evaluation/report.html" in outputs[1]
    assert (tmp_path / "detections" / "predictions.json").is_file() and "boxes on 8 images" in outputs[2]
    assert "detect" in outputs[3] and "boxes after NMS" in outputs[4] and "within the goal" in outputs[4]
    served = tmp_path / "shapes" / "images" / "test" / "test_0000.png"
    assert served.is_file()  # the file the page's curl example uploads
