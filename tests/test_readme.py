"""The README's Python example runs (on bundled digits, with a random-weight backbone)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dinotune.data.bundled import digits_imagefolder

    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    digits = digits_imagefolder(tmp_path / "digits", size=16)
    image = next((digits / "test" / "7").iterdir())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DINOTUNE_HOME", str(tmp_path / "home"))
    code = (
        code.replace('"./dinov3-vits16"', '"random:vit_test16"')
        .replace('"my_images/"', repr(str(digits)))
        .replace('"image_size": 224', '"image_size": 16')
        .replace('"new.png"', repr(str(image)))
    )
    exec(compile(code, str(README), "exec"), {})
    run = next(tmp_path.joinpath("runs").glob("probe-*"))
    assert (run / "model.json").is_file() and (run / "export" / "model.onnx").is_file()
