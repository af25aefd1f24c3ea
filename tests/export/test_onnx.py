"""ONNX export: ONNX Runtime equals PyTorch at other batch sizes and non-square inputs (RoPE, SDPA),
int8 runs and reports its agreement, and the served ONNX model answers like the PyTorch one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinotune.errors import ConfigError
from dinotune.export.onnx import export_model
from dinotune.export.quantize import centred_cosines, int8_verdict
from dinotune.model import load_model, read_card
from tests.serve.helpers import CLASSES, make_model_folder

pytest.importorskip("onnxruntime")
MODELS = {"vit": ("vit_test16", "cls+patch_mean", 16), "convnext": ("convnext_test", "cls", 32)}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, images: Path) -> dict[str, tuple[Path, Path, dict]]:
    """Each architecture exported once (ViT with int8) and shared by the tests below."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, (arch, choice, _) in MODELS.items():
        folder = make_model_folder(root / name, arch=arch, choice=choice, image_size=64)
        report = export_model(
            folder,
            root / f"{name}-onnx",
            quantize="int8" if name == "vit" else None,
            calibration_images=images,
            timing_repeats=1,
        )
        out[name] = (folder, root / f"{name}-onnx", report)
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_matches_pytorch(exported, name: str) -> None:
    import onnxruntime as ort

    folder, onnx_folder, report = exported[name]
    multiple = MODELS[name][2]
    assert report["parity"]["max_abs_diff"] < 1e-4 and report["parity"]["within_goal"]
    assert report["dynamic_axes"] == ["batch", "height", "width"]
    model, _ = load_model(folder, device="cpu")
    session = ort.InferenceSession(str(onnx_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for shape in [(5, 3, 64, 64), (1, 3, 64, 64 + 2 * multiple), (2, 3, 3 * multiple, 2 * multiple)]:
        x = torch.randn(*shape)
        logits, embedding = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
            cls = model.forward_features(x)["cls"].numpy() if "cls" in model.kinds else None
        assert logits.shape == (shape[0], 3)
        assert np.abs(logits - expected).max() < 1e-4, shape
        if cls is not None:
            assert np.abs(embedding - cls).max() < 1e-4


def test_export_card_holds_what_serving_needs(exported) -> None:
    folder, onnx_folder, report = exported["vit"]
    card = read_card(onnx_folder)
    source = read_card(folder)
    assert card.classes == CLASSES and card.license == source.license
    assert card.preprocessing == source.preprocessing and card.preprocessing.image_size == 64
    served = "model.int8.onnx" if report["int8"]["kept"] else "model.onnx"  # int8 only when it pays
    assert card.head["type"] == "onnx" and card.head["file"] == served == report["served"]
    saved = card.metrics["export"]
    assert saved["parity"]["max_abs_diff"] == report["parity"]["max_abs_diff"]
    assert saved["validation_images"] == 6
    stats = json.loads((onnx_folder / "reference_stats.json").read_text())
    assert stats["n"] == 6 and len(stats["mean"]) == len(stats["std"]) == 64  # vit_test16 width


def test_int8_runs_and_reports_agreement_and_speed(exported) -> None:
    _, onnx_folder, report = exported["vit"]
    int8 = report["int8"]
    assert (onnx_folder / "model.int8.onnx").is_file() and int8["method"] == "dynamic"
    assert int8["evaluated_on"] == "images" and int8["n"] == 6
    assert 0.0 <= int8["top1_agreement"] <= 1.0 and int8["cosine_of"] == "embedding"
    assert -1.0 <= int8["mean_cosine_vs_fp32"] <= 1.0 + 1e-9 and int8["kept"] == (not int8["reasons"])
    assert int8["timing"]["int8_speedup_vs_fp32"] > 0 and int8["size_ratio"] < 1
    assert "int8" not in exported["convnext"][2]


@pytest.mark.parametrize("name", list(MODELS))
def test_served_onnx_equals_served_pytorch(exported, name: str) -> None:
    from dinotune.serve import load_engine

    folder, onnx_folder, _ = exported[name]
    torch_engine = load_engine(folder)
    onnx_engine = load_engine(onnx_folder / "model.onnx" if name == "convnext" else onnx_folder)
    assert onnx_engine.runtime == "onnxruntime" and onnx_engine.card.classes == CLASSES
    assert onnx_engine.reference is not None and onnx_engine.reference.n == 6
    x = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    p_torch, e_torch = torch_engine.run(x)
    p_onnx, e_onnx = onnx_engine.run(x)
    if onnx_engine.card.head["file"] == "model.int8.onnx":  # int8 is served: close, not equal
        assert np.abs(p_onnx - p_torch).max() < 0.5
    else:
        np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5)
        np.testing.assert_allclose(e_onnx, e_torch, atol=1e-4)


def test_int8_is_served_only_when_faster_and_agreeing() -> None:
    good = {
        "evaluated_on": "images",
        "top1_agreement": 1.0,
        "cosine_of": "embedding",
        "mean_cosine_vs_fp32": 0.999,
        "timing": {"int8_speedup_vs_fp32": 1.8},
    }
    assert int8_verdict(good) == (True, [])
    collapsed = {**good, "mean_cosine_vs_fp32": 0.2}  # top-1 kept, features gone (DINOv3 at default int8)
    slower = {**good, "timing": {"int8_speedup_vs_fp32": 0.63}}
    unseen = {**good, "evaluated_on": "random inputs"}
    for case, reason in [(collapsed, "cosine 0.2000 < 0.99"), (slower, "0.63x the fp32 speed"), (unseen, "real")]:
        kept, reasons = int8_verdict(case)
        assert not kept and len(reasons) == 1 and reason in reasons[0]
    assert int8_verdict({**good, "top1_agreement": 0.9})[1] == ["top-1 agreement 0.9000 < 0.99"]


def test_embedding_cosine_is_centred_so_a_common_direction_cannot_hide_scrambled_features() -> None:
    rng = np.random.default_rng(0)
    common = 50.0 * rng.normal(size=(1, 32))  # what every embedding shares (large on random weights)
    fp32 = common + rng.normal(size=(8, 32))
    scrambled = common + rng.normal(size=(8, 32))  # the per-image part replaced: features gone
    close = fp32 + 0.01 * rng.normal(size=(8, 32))
    centred, raw = centred_cosines(fp32, scrambled)
    assert raw.mean() > 0.99 and centred.mean() < 0.3  # uncentred, the gate would have passed it
    centred, raw = centred_cosines(fp32, close)
    assert centred.min() > 0.99 and raw.min() > 0.99
    one, one_raw = centred_cosines(fp32[:1], scrambled[:1])  # one image: nothing to centre on
    np.testing.assert_array_equal(one, one_raw)


def test_off_grid_sizes_follow_pytorch(exported) -> None:
    """ViT refuses sizes off its patch grid in PyTorch, and its export says so; ConvNeXt runs them (its
    feature maps are floored) and ONNX Runtime answers the same there, so its export runs them too."""
    assert exported["vit"][2]["other_sizes"]["rule"] == "refused"
    convnext = exported["convnext"][2]["other_sizes"]
    assert convnext["rule"] == "run" and convnext["max_abs_diff"] < 1e-4 and convnext["probe"][-1] % 32


def test_export_refuses_bad_arguments_and_foreign_folders(exported, tmp_path: Path) -> None:
    folder = exported["vit"][0]
    with pytest.raises(ConfigError, match="quantize"):
        export_model(folder, tmp_path / "x", quantize="int4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--format"):
        export_model(folder, tmp_path / "x", fmt="tflite")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--calibration"):
        export_model(folder, tmp_path / "x", quantize="int8", static=True)
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):  # an existing folder is never replaced silently
        export_model(folder, precious)
    assert (precious / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_backbone_only_and_static_int8(exported, images: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    folder = exported["vit"][0]
    report = export_model(
        folder,
        tmp_path / "emb",
        backbone_only=True,
        quantize="int8",
        static=True,
        calibration_images=images,
        timing_repeats=1,
    )
    assert report["outputs"] == ["embedding", "patch_mean"] and report["int8"]["method"] == "static"
    assert report["int8"]["mean_cosine_vs_fp32"] > 0.9
    assert read_card(tmp_path / "emb").task == "embed"
    model, _ = load_model(folder, device="cpu")
    x = torch.randn(3, 3, 48, 80)
    session = ort.InferenceSession(str(tmp_path / "emb" / "model.onnx"), providers=["CPUExecutionProvider"])
    embedding, patch_mean = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        features = model.forward_features(x)
    assert np.abs(embedding - features["cls"].numpy()).max() < 1e-4
    assert np.abs(patch_mean - features["patch_mean"].numpy()).max() < 1e-4
