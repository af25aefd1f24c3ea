"""A self-describing export: docs/examples/onnx_client.py (numpy + PIL + onnxruntime, nothing else)
reads only the card and answers as `dinotune predict` does, on a probe run (ViT) and a fine-tuned
ConvNeXt run, on images whose size and aspect make the resize geometry matter; the card's checksum
is verified on load; sizes off the patch grid are refused by ONNX exactly where PyTorch refuses."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinotune.errors import CheckpointError, DataError
from dinotune.export.onnx import export_model
from dinotune.export.seal import METADATA_KEYS
from dinotune.model import load_model, load_onnx_model, read_card
from dinotune.verbs.predict import predict
from dinotune.verbs.probe import probe
from tests.training_fixtures import SUBPROCESS_ENV, finetune_config

pytest.importorskip("onnxruntime")
CLIENT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "onnx_client.py"
FAST_PROBE = {"sweep": {"epochs": 5, "lrs": [1e-2], "weight_decays": [0.0]}, "progress": False}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Wide, tall, odd-sized, square, grey, RGBA and 16-bit grey files, plus a JPEG."""
    folder, rng, paths = tmp_path_factory.mktemp("client-images"), np.random.default_rng(0), []
    for name, (h, w) in {"wide": (13, 200), "tall": (100, 37), "odd": (41, 53), "square": (64, 64)}.items():
        paths.append(folder / f"{name}.png")
        smooth = rng.integers(0, 255, (h // 4 + 2, w // 4 + 2, 3), dtype=np.uint8)
        Image.fromarray(smooth).resize((w, h), Image.BICUBIC).save(paths[-1])
    paths.append(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (45, 30), dtype=np.uint8), mode="L").save(paths[-1])
    paths.append(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (33, 47, 4), dtype=np.uint8), mode="RGBA").save(paths[-1])
    paths.append(folder / "grey16.png")
    Image.fromarray(rng.integers(0, 65535, (50, 70), dtype=np.uint16)).save(paths[-1])
    paths.append(folder / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(paths[-1], quality=90)
    return paths


@pytest.fixture(scope="module")
def vit(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, export) of a ViT probe run at 32 px on 16 px digits (crop: upscale, then centre crop)."""
    root = tmp_path_factory.mktemp("client-vit")
    torch.set_num_threads(1)
    run = probe(
        {"root": digits, "image_size": 32, "num_workers": 0},
        backbone="random:vit_test16",
        out=root / "probe",
        cache_dir=root / "cache",
        **FAST_PROBE,
    ).run_dir
    export_model(run, root / "export", max_images=8, timing_repeats=1)
    return run, root / "export"


@pytest.fixture(scope="module")
def convnext(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, export) of a ConvNeXt fine-tuned for one epoch at 32 px, letterboxed (resize: pad)."""
    from dinotune.verbs.finetune import run_finetune

    root = tmp_path_factory.mktemp("client-convnext")
    torch.set_num_threads(1)
    config = finetune_config(
        digits,
        root / "run",
        data={"root": str(digits), "image_size": 32, "num_workers": 0, "augment": "none", "resize": "pad"},
        backbone={"source": "random:convnext_test"},
        trainer={"max_epochs": 1, "progress_bar": False},
    )
    run = run_finetune(config).run_dir
    export_model(run, root / "export", max_images=8, timing_repeats=1)
    return run, root / "export"


def _client(folder: Path, images: list[Path]) -> list[dict]:
    command = [sys.executable, str(CLIENT), str(folder), *map(str, images), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_client_imports_only_numpy_pil_and_onnxruntime() -> None:
    allowed = {"numpy", "PIL", "onnxruntime", "__future__", *sys.stdlib_module_names}
    tree = ast.parse(CLIENT.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules and {m.split(".")[0] for m in modules} <= allowed


def _agrees_with_predict(run: Path, folder: Path, images: list[Path], mode: str) -> None:
    card = read_card(folder)
    assert card.input_spec["resize"]["mode"] == mode
    answers = _client(folder, images)
    for source in (folder, run):  # the export (what the client runs) and the PyTorch run it came from
        expected = predict(source, images, top_k=len(card.classes))
        assert len(expected) == len(answers) == len(images)
        for got, want in zip(answers, expected, strict=True):
            assert Path(got["file"]) == want.path and got["label"] == want.label
            for label, probability in want.top:
                assert abs(got["probabilities"][label] - probability) < 1e-3, (source, want.path, label)


def test_client_reproduces_dinotune_predict_on_a_vit_probe_run(vit, images: list[Path]) -> None:
    _agrees_with_predict(*vit, images, "crop")


@pytest.mark.slow  # a fine-tune and a second export: ~15 s more
def test_client_reproduces_dinotune_predict_on_a_finetuned_convnext(convnext, images: list[Path]) -> None:
    _agrees_with_predict(*convnext, images, "pad")


def test_card_and_onnx_metadata_state_the_preprocessing(vit) -> None:
    import onnx

    _, folder = vit
    card = read_card(folder)
    text = card.input_spec["description"]
    for fact in ("RGB", "x / 255", "half-pixel", "no antialiasing", "(H - 32) // 2", "softmax", "multiples of 16"):
        assert fact in text, fact
    assert card.input_spec["normalize"]["mean"] == pytest.approx(list(card.preprocessing.mean), abs=1e-6)
    meta = {p.key: p.value for p in onnx.load(str(folder / "model.onnx"), load_external_data=False).metadata_props}
    assert set(METADATA_KEYS) <= set(meta) and meta["dinotune.preprocessing"] == text
    assert json.loads(meta["dinotune.classes"]) == card.classes
    assert set(card.files) >= {"model.onnx", "reference_stats.json"} and len(card.files["model.onnx"]["sha256"]) == 64


def test_a_changed_model_file_is_one_clear_error(vit, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(vit[1], copy)
    load_onnx_model(copy, read_card(copy))  # intact: loads
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(CheckpointError, match=r"sha256 differs .*files\.model\.onnx"):
        load_model(copy)
    old = json.loads((copy / "model.json").read_text())  # a card written before checksums still loads
    for key in ("files", "input_spec"):
        old.pop(key)
    (copy / "model.json").write_text(json.dumps(old))
    shutil.copy(vit[1] / "model.onnx", copy / "model.onnx")
    assert load_model(copy)[1].files == {}


def test_off_grid_sizes_are_refused_where_pytorch_refuses(vit) -> None:
    x = torch.randn(1, 3, 40, 40)  # not a multiple of the ViT patch (16)
    run, folder = vit
    with pytest.raises(ValueError, match="multiple of the patch size"):
        load_model(run)[0](x)
    assert read_card(folder).head["other_sizes"] == "refused"
    with pytest.raises(DataError, match="40x40 is not a multiple of 16"):
        load_model(folder)[0](x)
    load_model(folder)[0](torch.randn(1, 3, 48, 32))  # on the grid: runs


def test_docs_example_reads_the_description_from_the_graph(vit, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    page = (CLIENT.parents[1] / "export.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert 'Path("export")' in code
    exec(code.replace('Path("export")', f"Path({str(vit[1])!r})"), {})
    assert capsys.readouterr().out.strip() == read_card(vit[1]).input_spec["description"]
