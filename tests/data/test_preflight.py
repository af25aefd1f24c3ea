"""Dataset-level problems stop `data check` (exit 1) and `preflight` with the same single line."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from dinotune.cli_data import data_app
from dinotune.data.config import DataConfig
from dinotune.data.formats import load_dataset
from dinotune.data.preflight import dataset_problems, preflight
from dinotune.errors import DataError
from tests.data.conftest import rgb, save

runner = CliRunner()


def _error_lines(output: str) -> list[str]:
    """The lines of the ERRORS section of `data check`'s text report."""
    lines = output.splitlines()
    if not any(line.startswith("ERRORS") for line in lines):
        return []
    start = next(i for i, line in enumerate(lines) if line.startswith("ERRORS")) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  [")), len(lines))
    return lines[start:end]


def _check(root, *args: str) -> tuple[int, list[str]]:
    res = runner.invoke(data_app, ["check", str(root), "--min-per-class", "1", *args])
    return res.exit_code, _error_lines(res.output)


def _preflight_message(root, **cfg) -> str:
    spec = load_dataset(root, split_file=None)
    with pytest.raises(DataError) as err:
        preflight(spec, DataConfig(root=root, **cfg))
    return str(err.value)


def test_one_class_dataset_fails_check_and_preflight_with_one_line(tmp_path):
    root = tmp_path / "one"
    for i in range(6):
        save(root / "cat" / f"{i}.png", rgb(seed=i))
    code, errors = _check(root)
    assert code == 1 and len(errors) == 1 and errors[0].startswith("  [one_class]")
    message = _preflight_message(root)
    assert "only one class" in message and "'cat'" in message and "\n" not in message
    assert errors[0] == f"  [one_class] {message}"


def test_six_band_folder_with_three_channels_is_one_line_not_one_per_file(tmp_path):
    root = tmp_path / "bands"
    for cls in ("field", "forest"):
        for i in range(15):
            arr = np.random.default_rng(i).integers(0, 4000, (16, 16, 6), dtype=np.uint16)
            path = root / cls / f"{i:02d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="contig")
    code, errors = _check(root)
    assert code == 1 and len(errors) == 1, errors
    assert "30 of 30 images have 6 channels but data.channels=3" in errors[0]
    assert "field/00.tif, field/01.tif, field/02.tif, ..." in errors[0] and "set data.channels: 6" in errors[0]
    message = _preflight_message(root)
    assert errors[0] == f"  [channels] {message}"
    assert dataset_problems(load_dataset(root), DataConfig(root=root), channels=6) == []  # resolved count wins
    assert _check(root, "--channels", "6") == (0, [])
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  root: {root}\n  channels: 6\n  mean: {[0.5] * 6}\n  std: {[0.2] * 6}\n")
    assert _check(root, "--config", str(config)) == (0, [])  # data.channels read from the run config
    assert dataset_problems(load_dataset(root), DataConfig(root=root, channels=6, mean=[0.5] * 6, std=[0.2] * 6)) == []


def test_class_too_small_for_the_split(tmp_path):
    root = tmp_path / "small"
    for i in range(6):
        save(root / "a" / f"{i}.png", rgb(seed=i))
    for i in range(3):  # round(3 x 0.1) = 0 validation images
        save(root / "b" / f"{i}.png", rgb(seed=20 + i))
    save(root / "c" / "only.png", rgb(seed=9))
    code, errors = _check(root)
    assert code == 1 and len(errors) == 2, errors
    assert (
        "class 'b' has 3 image(s), too few for the split (val_fraction=0.1 gives it no validation image); "
        "add images, raise data.val_fraction to 0.17" in errors[0]
    )
    assert "class 'c' has 1 image(s)" in errors[1] and "add images or remove the class" in errors[1]
    message = _preflight_message(root)
    assert message.startswith(errors[0].removeprefix("  [class_too_small] ")) and "and 1 more problem" in message
    spec = load_dataset(root, val_fraction=0.17)  # the suggested fix gives b a validation image ...
    assert sum(s.label == 1 for s in spec.splits["val"]) == 1
    problems = dataset_problems(spec, DataConfig(root=root, val_fraction=0.17))
    assert [p.code for p in problems] == ["class_too_small"]  # ... and only c (1 image) is left


def test_explicit_split_without_a_class_in_val(tmp_path):
    root = tmp_path / "folders"
    for k, (split, cls, n) in enumerate((("train", "a", 3), ("train", "b", 3), ("val", "a", 1))):
        for i in range(n):
            save(root / split / cls / f"{i}.png", rgb(seed=10 * k + i))
    code, errors = _check(root)
    assert code == 1 and len(errors) == 1 and "class 'b' has no image in the val split" in errors[0]


def test_unreadable_files_are_aggregated_into_one_line(tmp_path):
    root = tmp_path / "broken"
    for cls in ("a", "b"):
        for i in range(3):
            save(root / cls / f"{i}.png", rgb(seed=i + (5 if cls == "b" else 0)))
        for i in range(4):
            (root / cls / f"bad{i}.png").write_text("not a png")
    message = _preflight_message(root, on_bad_file="error")
    assert message.startswith("8 of 14 images cannot be read, e.g. a/bad0.png, a/bad1.png, a/bad2.png, ...")
    spec = load_dataset(root)
    assert dataset_problems(spec, DataConfig(root=root)) == []  # skipped while training: a warning only
    res = runner.invoke(data_app, ["check", str(root), "--min-per-class", "1"])
    not_image = [line for line in _error_lines(res.output) if line.startswith("  [not_image]")]
    assert res.exit_code == 1 and len(not_image) == 1 and not_image[0].startswith("  [not_image] 8 files, e.g.")
