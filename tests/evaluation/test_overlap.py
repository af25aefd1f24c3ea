"""`evaluate` on a dataset that holds training images of the run says so in one line, with the count."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dinotune.evaluation.overlap import warn_training_overlap


def _run_on(data: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"data:\n  root: {data}\n")
    return folder


def test_shifted_dataset_with_training_images_warns_once_with_the_count(small_digits, tmp_path, caplog) -> None:
    run = _run_on(small_digits, tmp_path / "run")
    shifted = tmp_path / "shifted"
    train = sorted((small_digits / "train").rglob("*.png"))
    for path in train[:10]:  # copied: other paths, same bytes
        target = shifted / path.parent.name / f"copy_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(shifted / "0" / f"new_{i}.png")
    with caplog.at_level(logging.WARNING, logger="dinotune"):
        assert warn_training_overlap(run, shifted, "test", "classify") == 10
    lines = [r.getMessage() for r in caplog.records if "training images" in r.getMessage()]
    assert len(lines) == 1 and "10 of 16 evaluated images are training images of this run" in lines[0]
    caplog.clear()
    assert warn_training_overlap(run, small_digits, "test", "classify") == 0  # its own test split
    assert not caplog.records
