"""The depth task end to end on generated scenes with known geometry (tests/depth/scenes.py): a frozen
random backbone + the binned linear head beats the median-depth baseline; run folder, card, depth files,
evaluate, predict, ONNX export parity, serving (PyTorch and ONNX Runtime), compare and resume."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from dinotune.config import validate
from dinotune.data.depth import load_depth_dataset, read_depth, valid_depth
from dinotune.metrics.depth import DepthMeter
from dinotune.model import load_model, read_card
from dinotune.verbs.common import Result
from dinotune.verbs.depth import DepthConfig, run_depth
from tests.depth.scenes import write_scenes

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin
MAX_DEPTH = 10.0


def depth_config(root: Path, out: Path, **overrides: Any) -> DepthConfig:
    values: dict[str, Any] = {
        "data": {"root": str(root), "image_size": 64, "num_workers": 0, "augment": "none", "max_depth": MAX_DEPTH},
        "backbone": {"source": "random:vit_test16"},
        "head": {"type": "linear", "bins": 64},
        "batch_size": 16,
        "optim": {"head_lr": 3e-3, "warmup": 0.0},
        "trainer": {"max_epochs": 15, "progress_bar": False},
        "inference": {"mode": "whole"},
        "out": str(out),
    }
    values.update(overrides)
    return validate(DepthConfig, values)


def train(cfg: DepthConfig, resume: bool = False) -> Result:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_depth(cfg, resume=resume)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("depth") / "scenes", {"train": 48, "val": 12, "test": 12})


@pytest.fixture(scope="module")
def depth_run(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Result:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(depth_config(scenes, tmp_path_factory.mktemp("depth") / "run"))
    finally:
        torch.set_num_threads(before)


def median_baseline(root: Path, split: str) -> dict[str, Any]:
    """The trivial predictor: the training set's median valid depth everywhere."""
    spec = load_depth_dataset(root)
    train_depths = [read_depth(s.label) for s in spec.splits["train"]]
    median = float(np.median(np.concatenate([d[valid_depth(d, 0.001, MAX_DEPTH)] for d in train_depths])))
    meter = DepthMeter(0.001, MAX_DEPTH)
    for sample in spec.splits[split]:
        depth = torch.from_numpy(read_depth(sample.label))
        meter.update(torch.full_like(depth, median)[None], depth[None], valid_depth(depth, 0.001, MAX_DEPTH)[None])
    return meter.compute()


def test_frozen_random_backbone_beats_the_median_baseline(depth_run: Result, scenes: Path) -> None:
    base, ours = median_baseline(scenes, "test"), depth_run.metrics["test"]
    assert base["images"] == ours["images"] == 12
    # margins: AbsRel at most half the baseline's, delta1 at least 0.25 higher (measured: 0.17 vs 0.61, 0.82 vs 0.43)
    assert ours["absrel"] < 0.5 * base["absrel"], (ours["absrel"], base["absrel"])
    assert ours["delta1"] > base["delta1"] + 0.25, (ours["delta1"], base["delta1"])
    assert depth_run.metrics["best"]["monitor"] == "val/absrel"
    assert depth_run.metrics["best"]["value"] == pytest.approx(min_logged_absrel(depth_run.run_dir), rel=1e-5)


def min_logged_absrel(run_dir: Path) -> float:
    """The smallest val/absrel Lightning logged: the best model is the minimum, not the maximum."""
    import csv

    values = []
    for path in (run_dir / "logs").rglob("metrics.csv"):
        with open(path) as handle:
            values += [float(r["val/absrel"]) for r in csv.DictReader(handle) if r.get("val/absrel")]
    return min(values)


def test_run_folder_card_and_depth_files(depth_run: Result, scenes: Path) -> None:
    run_dir = depth_run.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "depth" and metrics["directions"]["absrel"] == "min"
    assert metrics["directions"]["delta1"] == "max"
    card = read_card(run_dir)
    assert card.task == "depth" and card.head["type"] == "linear"
    assert card.head["depth"] == {"min_depth": 0.001, "max_depth": MAX_DEPTH, "depth_scale": 0.001, "unit": "m"}
    # the written 16-bit PNGs, read back with their sidecar's scale, give the reported metric again
    meter = DepthMeter(0.001, MAX_DEPTH)
    for sample in load_depth_dataset(scenes).splits["test"]:
        target = run_dir / "predictions" / "depth" / f"{sample.path.stem}.png"
        scale = json.loads(target.with_suffix(".json").read_text())["scale"]
        stored = np.asarray(Image.open(target))
        assert stored.dtype == np.uint16 and scale == 0.001
        gt = torch.from_numpy(read_depth(sample.label))
        meter.update(torch.from_numpy(stored * scale)[None], gt[None], valid_depth(gt, 0.001, MAX_DEPTH)[None])
    assert meter.compute()["absrel"] == pytest.approx(metrics["test"]["absrel"], abs=2e-4)  # 1 mm steps
    assert len(list((run_dir / "predictions" / "previews").glob("*.png"))) == 8
    assert "data:image/png;base64" in (run_dir / "report.html").read_text()


def test_predict_writes_png_and_tiff_at_the_right_scale(depth_run: Result, scenes: Path, tmp_path: Path) -> None:
    from dinotune.verbs.predict import run_predict

    folder = scenes / "images" / "test"
    png, _ = run_predict(depth_run.run_dir, [folder], out=tmp_path / "png")
    tif, _ = run_predict(depth_run.run_dir, [folder], out=tmp_path / "tif", depth_format="tiff")
    assert png.metrics == tif.metrics == {"depth_maps": 12}
    for path in sorted((tmp_path / "tif" / "depth").glob("*.tif"))[:3]:
        metres = tifffile.imread(path)
        stored = np.asarray(Image.open(tmp_path / "png" / "depth" / f"{path.stem}.png"))
        assert metres.dtype == np.float32 and metres.shape == stored.shape == (64, 64)
        assert np.abs(stored * 0.001 - metres).max() <= 0.0005 + 1e-6  # rounding to whole millimetres
        assert metres.min() >= 0.001 and metres.max() <= MAX_DEPTH
        assert (tmp_path / "png" / "previews" / f"{path.stem}.png").is_file()


def test_evaluate_on_new_data_reproduces_the_test_metrics(depth_run: Result, scenes: Path, tmp_path: Path) -> None:
    from dinotune.verbs.evaluate import run_evaluate

    result = run_evaluate(depth_run.run_dir, scenes, split="test", out=tmp_path / "eval")
    for key in ("absrel", "rmse", "delta1", "log10"):
        assert result.metrics["test"][key] == pytest.approx(depth_run.metrics["test"][key], rel=1e-6)
    assert (tmp_path / "eval" / "per_image_depth.csv").is_file()
    report = (tmp_path / "eval" / "report.html").read_text()
    assert f"Depth: {depth_run.run_dir.name}" in report and ".tmp" not in report.split("</h1>")[0]  # not the temp dir
    assert "frozen backbone + linear head" in report  # read from the run's config and card, not guessed


def test_compare_reads_depth_runs_lower_is_better(depth_run: Result) -> None:
    from dinotune.evaluation.compare import read_run

    row = read_run(depth_run.run_dir)
    assert row["metric"] == "absrel" and row["better"] == "lower"
    assert row["value"] == pytest.approx(depth_run.metrics["test"]["absrel"])


def _decode(answer: dict[str, Any]) -> np.ndarray:
    depth = answer["depth"]
    assert depth["dtype"] == "float16" and depth["unit"] == "m"
    return np.frombuffer(base64.b64decode(depth["data"]), "<f2").reshape(depth["shape"]).astype(np.float32)


@pytest.fixture(scope="module")
def exported(depth_run: Result, scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from dinotune.export.onnx import export_model

    folder = tmp_path_factory.mktemp("depth") / "export"
    report = export_model(depth_run.run_dir, folder, calibration_images=scenes / "images" / "val", max_images=4,
                          timing_repeats=1)  # fmt: skip
    return folder, report


def test_export_parity(depth_run: Result, exported: tuple[Path, dict], scenes: Path) -> None:
    from dinotune.evaluation.depth import depth_settings
    from dinotune.model.depther import predict_depth

    folder, report = exported
    assert report["parity"]["max_rel_diff"] <= 1e-3, report["parity"]
    assert report["outputs"] == ["depth"] and report["dynamic_axes"] == ["batch", "height", "width"]
    assert depth_settings(read_card(folder)) == depth_settings(read_card(depth_run.run_dir))
    onnx_model, card = load_model(folder)
    torch_model, _ = load_model(depth_run.run_dir)
    x = card.preprocessing.load(sorted((scenes / "images" / "test").iterdir())[0], 16)[None]
    x = torch.cat([x, x[..., :48]], dim=-1)  # 64 x 112: a size the export was not traced at
    expected = predict_depth(torch_model, x)[0, 0].numpy()
    assert np.abs(predict_depth(onnx_model, x)[0, 0].numpy() - expected).max() / expected.min() <= 1e-3


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_serve_answers_a_depth_map(
    runtime: str, depth_run: Result, exported: tuple[Path, dict], scenes: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from dinotune.model.depther import predict_depth
    from dinotune.serve import create_app

    image_path = sorted((scenes / "images" / "test").iterdir())[0]
    model, card = load_model(depth_run.run_dir)
    expected = predict_depth(model, card.preprocessing.load(image_path, 16)[None])[0, 0].numpy()  # 64 x 64: no resize
    folder = depth_run.run_dir if runtime == "torch" else exported[0]
    with caplog.at_level(logging.INFO, logger="dinotune.serve"), TestClient(create_app(folder)) as client:
        for _ in range(600):  # the model loads in the background
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/info").json()["runtime"] == runtime
        response = client.post("/predict", files={"file": ("x.png", image_path.read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    assert "depth in metres" in caplog.text and "1 classes" not in caplog.text  # the ready line
    answer = response.json()
    served = _decode(answer)
    assert served.shape == (64, 64) and answer["depth"]["min"] == pytest.approx(float(served.min()), rel=1e-3)
    assert np.abs(served - expected).max() <= 2e-3 * expected.max()  # float16 rounding


def test_resume_continues_the_run(scenes: Path, tmp_path: Path) -> None:
    short = {"max_epochs": 1, "progress_bar": False}
    first = train(depth_config(scenes, tmp_path / "run", trainer=short))
    assert first.metrics["epochs_run"] == 1 and not first.metrics["resumed"]
    second = train(depth_config(scenes, tmp_path / "run", trainer={**short, "max_epochs": 2}), resume=True)
    assert second.metrics["epochs_run"] == 2 and second.metrics["resumed"]
    assert second.metrics["steps"] == 2 * first.metrics["steps"]


@pytest.mark.slow  # about 20 s on 2 shared cores
def test_dpt_head_learns(scenes: Path, tmp_path: Path) -> None:
    cfg = depth_config(scenes, tmp_path / "dpt", head={"type": "dpt", "bins": 32, "width": 32},
                       trainer={"max_epochs": 8, "progress_bar": False})  # fmt: skip
    result = train(cfg)
    assert result.metrics["test"]["absrel"] < 0.6 * median_baseline(scenes, "test")["absrel"]
    assert read_card(result.run_dir).head["layers"] == [0, 1, 1, 1]  # 4 evenly spaced blocks of a 2-block test ViT


def test_shipped_config_loads(scenes: Path) -> None:
    from dinotune.config import load_config

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(DepthConfig, repo / "configs" / "depth.yaml", [f"data.root={scenes}"])
    assert cfg.task == "depth" and cfg.head.bins == 256 and cfg.loss.silog_lambda == 0.85


def test_io_roundtrip_of_a_float_tiff(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.full((4, 5), 2.5, np.float32))
    (tmp_path / "d.tif").write_bytes(buffer.getvalue())
    assert read_depth(tmp_path / "d.tif", scale=123.0).tolist() == [[2.5] * 5] * 4  # float: scale not applied
