"""Every run type through the whole lifecycle: train, evaluate, compare, export (+ int8), predict on the
export, serve `/predict`, with the run and its fp32 export agreeing (classification: same top-1 and
probabilities within 1e-4; segmentation: at least 99.9% of pixels equal)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dinotune.config import validate
from dinotune.data.bundled import digits_imagefolder, make_segmentation_dataset
from dinotune.data.decode import read_image
from dinotune.data.transforms import FullSize
from dinotune.model import load_model, load_onnx_model, read_card
from dinotune.model.inference import InferenceConfig, predict_probs
from dinotune.serve import ServeConfig, create_app
from dinotune.verbs.common import Result
from dinotune.verbs.compare import run_compare
from dinotune.verbs.evaluate import run_evaluate
from dinotune.verbs.export import run_export
from dinotune.verbs.finetune import FinetuneConfig, run_finetune
from dinotune.verbs.predict import predict
from dinotune.verbs.pretrain import PretrainConfig, run_pretrain
from dinotune.verbs.probe import ProbeConfig, run_probe
from dinotune.verbs.segment import SegmentConfig, run_segment

CLASSIFIERS = ["probe", "finetune", "lora", "partial", "distill"]
BACKBONE = {"source": "random:vit_test16"}
TRAINER = {"max_epochs": 2, "progress_bar": False}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_imagefolder(tmp_path_factory.mktemp("data") / "digits", size=32)


@pytest.fixture(scope="module")
def masks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_segmentation_dataset(tmp_path_factory.mktemp("seg") / "digits", 24, size=64)


def _finetune(digits: Path, out: Path, mode: str, **extra: Any) -> Result:
    values = {
        "data": {"root": str(digits), "image_size": 32, "num_workers": 0, "augment": "none"},
        "backbone": BACKBONE,
        "mode": mode,
        "batch_size": 32,
        "freeze_blocks": 1,
        "optim": {"lr": 1e-3, "head_lr": 1e-3},
        "trainer": TRAINER,
        "out": str(out),
        **extra,
    }
    return run_finetune(validate(FinetuneConfig, values))


def _probe(digits: Path, out: Path, sweep: bool) -> Result:
    values = {
        "data": {"root": str(digits), "image_size": 32, "num_workers": 0},
        "backbone": BACKBONE,
        "sweep": {"enabled": sweep, "epochs": 5},
        "progress": False,
        "out": str(out),
        "cache_dir": str(out.parent / "cache"),
    }
    return run_probe(validate(ProbeConfig, values))


@pytest.fixture(scope="module")
def runs(digits: Path, masks: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """One run of every type, trained once for all the tests of this module."""
    root = tmp_path_factory.mktemp("runs")
    out = {"probe": _probe(digits, root / "probe", True), "knn": _probe(digits, root / "knn", False)}
    for mode in ("finetune", "lora", "partial"):
        out[mode] = _finetune(digits, root / mode, mode)
    out["distill"] = _finetune(digits, root / "distill", "distill", distill={"teacher": str(out["finetune"].run_dir)})
    seg = {
        "data": {"root": str(masks), "image_size": 64, "num_workers": 0, "augment": "none"},
        "backbone": BACKBONE,
        "batch_size": 8,
        "trainer": TRAINER,
        "inference": {"mode": "whole"},
        "out": str(root / "segment"),
    }
    out["segment"] = run_segment(validate(SegmentConfig, seg))
    ssl = {
        "data": {"root": str(digits / "train"), "batch_size": 8, "num_workers": 0},
        "backbone": BACKBONE,
        "crops": {"global_size": 32, "local_size": 16, "n_local": 1},
        "heads": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
        "trainer": {"max_steps": 2, "progress_bar": False},
        "out": str(root / "pretrain"),
    }
    out["pretrain"] = run_pretrain(validate(PretrainConfig, ssl))
    return out


def test_compare_shows_every_run_type_with_its_main_metric(runs: dict[str, Result], tmp_path: Path) -> None:
    rows = run_compare([r.run_dir for r in runs.values()], out=tmp_path / "cmp").metrics["rows"]
    by_run = {row["run"]: row for row in rows}
    for kind in [*CLASSIFIERS, "knn"]:
        row = by_run[kind]
        assert row["metric"] == "accuracy" and 0 <= row["value"] <= 1, row
        assert row["train_seconds"] > 0
    for kind in CLASSIFIERS:
        assert 0 < by_run[kind]["trainable"] <= by_run[kind]["total"], kind
    assert by_run["probe"]["trainable"] < by_run["finetune"]["trainable"]  # a head vs the whole network
    assert by_run["lora"]["trainable"] < by_run["finetune"]["trainable"]
    assert by_run["segment"]["metric"] == "miou" and 0 <= by_run["segment"]["value"] <= 1
    assert by_run["pretrain"]["task"] == "pretrain" and by_run["pretrain"]["train_seconds"] > 0
    assert (tmp_path / "cmp" / "comparison.html").is_file()


def _images(root: Path, n: int = 6) -> list[Path]:
    return sorted(root.rglob("*.png"))[:: max(1, len(list(root.rglob("*.png"))) // n)][:n]


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_classifier_lifecycle(kind: str, runs: dict[str, Result], digits: Path) -> None:
    run = runs[kind].run_dir
    evaluation = run_evaluate(run)  # the run's own data and test split
    assert (evaluation.run_dir / "report.html").is_file() and 0 <= evaluation.metrics["summary"]["accuracy"] <= 1
    assert read_card(run).task == "classify"
    export = run_export(run, run / "export")
    int8 = run_export(run, run / "export-int8", quantize="int8")
    assert export.metrics["parity"]["within_goal"] and 0 <= int8.metrics["int8"]["top1_agreement"] <= 1
    images = _images(digits / "test")
    on_run, on_export = predict(run, images), predict(export.run_dir, images)
    assert [p.label for p in on_run] == [p.label for p in on_export]
    for a, b in zip(on_run, on_export, strict=True):
        np.testing.assert_allclose([v for _, v in a.top], [v for _, v in b.top], atol=1e-4)
    assert run_evaluate(export.run_dir, digits, out=run / "evaluation-onnx").metrics["summary"][
        "accuracy"
    ] == pytest.approx(evaluation.metrics["summary"]["accuracy"], abs=1e-9)
    with TestClient(create_app(export.run_dir, ServeConfig(max_wait_ms=0))) as client:
        _wait_ready(client)
        answer = client.post("/predict", files={"file": ("x.png", images[0].read_bytes(), "image/png")}).json()
    assert answer["predictions"][0]["label"] == on_run[0].label
    assert answer["predictions"][0]["probability"] == pytest.approx(on_run[0].probability, abs=1e-4)


def test_segmenter_lifecycle(runs: dict[str, Result], masks: Path) -> None:
    run = runs["segment"].run_dir
    card = read_card(run)
    assert card.task == "segment" and (run / "report.html").is_file()
    evaluation = run_evaluate(run, masks, split="val")
    assert 0 <= evaluation.metrics["summary"]["val/miou"] <= 1
    assert (evaluation.run_dir / "per_image_iou.csv").is_file()
    heading = (evaluation.run_dir / "report.html").read_text().split("</h1>")[0]
    assert heading.endswith(f"Segmentation: {run.name}")  # the run, not the temporary folder it was written in
    assert f"frozen backbone + {card.head['type']} head" in (evaluation.run_dir / "report.html").read_text()
    export = run_export(run, run / "export", quantize="int8")
    assert export.metrics["parity"]["pixel_agreement"] >= 0.999
    torch_model, _ = load_model(run)
    onnx_model = load_onnx_model(export.run_dir, read_card(export.run_dir), "model.onnx")
    transform, cfg = FullSize(card.preprocessing.mean, card.preprocessing.std), InferenceConfig(**card.inference)
    same = total = 0
    image_path = _images(masks / "images", 3)[0]
    for path in _images(masks / "images", 3):
        x = transform(read_image(path, 3))["image"][None]
        a = predict_probs(torch_model, x, len(card.classes), cfg).argmax(1)
        b = predict_probs(onnx_model, x, len(card.classes), cfg).argmax(1)
        same, total = same + int((a == b).sum()), total + a.numel()
    assert same / total >= 0.999
    onnx_eval = run_evaluate(export.run_dir, masks, split="val", out=run / "evaluation-onnx")
    assert onnx_eval.metrics["summary"]["val/miou"] == pytest.approx(
        evaluation.metrics["summary"]["val/miou"], abs=1e-3
    )
    with TestClient(create_app(export.run_dir)) as client:
        _wait_ready(client)
        answer = client.post("/predict", files={"file": ("x.png", image_path.read_bytes(), "image/png")}).json()
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))))
    x = transform(read_image(image_path, 3))["image"][None]
    expected = predict_probs(torch_model, x, len(card.classes), cfg).argmax(1)[0].numpy()
    assert mask.shape == expected.shape and (mask == expected).mean() >= 0.999
    assert sum(answer["fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    assert set(answer["fractions"]) == set(card.classes)


def test_run_folder_contract(runs: dict[str, Result]) -> None:
    """docs/run-folder.md: what every run type leaves behind."""
    common = {"config.yaml", "metrics.json", "log.txt"}
    expected = {kind: common | {"model.json", "head.safetensors", "predictions.csv"} for kind in CLASSIFIERS}
    expected["probe"] |= {"sweep.csv"}
    expected["knn"] = set(common)  # no model: kNN keeps the training features, not a head
    for kind in ("finetune", "lora", "partial", "distill"):
        expected[kind] |= {"backbone", "last", "checkpoints", "logs"}
    expected["segment"] = common | {
        "model.json",
        "head.safetensors",
        "per_image_iou.csv",
        "predictions",
        "report.html",
        "checkpoints",
        "logs",
    }
    expected["pretrain"] = {"config.yaml", "metrics.json", "backbone_hf", "backbone.pth", "checkpoints", "logs"}
    for kind, names in expected.items():
        present = {p.name for p in runs[kind].run_dir.iterdir() if not p.name.startswith(".")}
        missing = names - present
        assert not missing, (kind, missing)
        metrics = json.loads((runs[kind].run_dir / "metrics.json").read_text())
        assert metrics["task"] in ("classify", "segment", "pretrain"), kind
        assert "train_seconds" in metrics, kind


def _wait_ready(client: TestClient) -> None:
    import time

    for _ in range(600):
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(client.get("/ready").json())
