"""The probe verb end to end on real (tiny) data: run folder contents, reuse of the cache, predict, train."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dinotune.data.bundled import digits_imagefolder
from dinotune.errors import ConfigError, DataError
from dinotune.model import load_model
from dinotune.verbs.predict import predict
from dinotune.verbs.probe import probe

FAST = {
    "sweep": {"epochs": 15, "lrs": [1e-3, 1e-2, 1e-1], "weight_decays": [0.0, 1e-3], "methods": ["sgd", "lbfgs"]},
    "progress": False,
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_imagefolder(tmp_path_factory.mktemp("data") / "digits", size=16)


@pytest.fixture(scope="module")
def run(digits: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("probe")
    result = probe(
        {"root": digits, "image_size": 16, "num_workers": 0},
        backbone="random:vit_test16",
        out=root / "run",
        cache_dir=root / "cache",
        **FAST,
    )
    return result, root


def test_run_folder_has_everything(run) -> None:
    result, _ = run
    files = {p.name for p in result.run_dir.iterdir()}
    assert {
        "config.yaml",
        "model.json",
        "head.safetensors",
        "metrics.json",
        "predictions.csv",
        "sweep.csv",
        "log.txt",
    } <= files
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    # (lrs x wds SGD heads + 6 L-BFGS Cs) x feature choices (vit_test16: no last4)
    assert metrics["probe"]["heads_trained"] == (3 * 2 + 6) * 2
    card = json.loads((result.run_dir / "model.json").read_text())
    assert card["head"]["method"] == metrics["probe"]["best_head"]["method"] and card["head"]["type"] == "linear"
    assert metrics["probe"]["test"]["accuracy"] > 0.5  # random features of real digits are far above 10% chance
    assert set(metrics["knn"]["test"]) == {"k=10", "k=20", "k=100", "k=200"}
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["sweep"]["epochs"] == 15


def test_predictions_csv_matches_the_reported_accuracy(run) -> None:
    result, _ = run
    with open(result.run_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    accuracy = sum(r["true"] == r["predicted"] for r in rows) / len(rows)
    assert len(rows) == result.metrics["counts"]["test"]
    assert accuracy == pytest.approx(result.metrics["probe"]["test"]["accuracy"], abs=1e-6)


def test_saved_model_reproduces_the_probe_on_images(run, digits: Path) -> None:
    result, _ = run
    with open(result.run_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))[:8]
    predictions = predict(result.run_dir, [r["file"] for r in rows])
    assert [p.label for p in predictions] == [r["predicted"] for r in rows]
    _, card = load_model(result.run_dir)
    assert card.classes == [str(i) for i in range(10)]
    for p, r in zip(predictions, rows, strict=True):
        assert p.probability == pytest.approx(float(r[f"p_{p.label}"]), abs=1e-3)


def test_second_run_hits_the_cache(run, digits: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, root = run
    caplog.set_level("INFO")
    probe(
        {"root": digits, "image_size": 16, "num_workers": 0},
        backbone="random:vit_test16",
        out=root / "run2",
        cache_dir=root / "cache",
        **FAST,
    )
    assert "train: 1259 images (0 newly extracted, 1259 cached)" in (root / "run2" / "log.txt").read_text()


def test_unlabelled_folder_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (16, 16)).save(tmp_path / f"{i}.png")
    with pytest.raises(DataError):
        probe({"root": tmp_path, "image_size": 16}, backbone="random:vit_test16", out=tmp_path / "run", **FAST)


def test_unknown_sweep_key_is_named(digits: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'sweep\.epochs'"):
        probe({"root": digits}, backbone="random:vit_test16", out=tmp_path / "r", sweep={"epocs": 3})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DINOTUNE_HOME": str(cwd / "home")}
    return subprocess.run(
        [sys.executable, "-m", "dinotune", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_train_with_a_yaml_config_and_knn_command(digits: Path, tmp_path: Path) -> None:
    config = tmp_path / "probe.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "probe",
                "backbone": {"source": "random:vit_test16"},
                "data": {"root": str(digits), "image_size": 16, "num_workers": 0},
                "sweep": {"epochs": 5, "lrs": [0.01], "weight_decays": [0.0]},
            }
        )
    )
    result = _cli("train", str(config), "out=trained", "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "trained" / "model.json").is_file()
    result = _cli(
        "knn",
        str(digits),
        "-b",
        "random:vit_test16",
        "--image-size",
        "16",
        "-o",
        "knnrun",
        "progress=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    knn_metrics = json.loads((tmp_path / "knnrun" / "metrics.json").read_text())
    assert "knn" in knn_metrics and "probe" not in knn_metrics
    bad = _cli("train", str(config), "task=nonsense", cwd=tmp_path)
    assert bad.returncode == 2 and "task" in bad.stderr


def test_predict_command(run, tmp_path: Path, digits: Path) -> None:
    result, _ = run
    out = _cli("predict", str(result.run_dir), str(digits / "test" / "3"), "-o", "p.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + len(list((digits / "test" / "3").iterdir()))
    missing = _cli("predict", str(result.run_dir), "nope.png", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.png" in missing.stderr


def test_quickstart_reduced(tmp_path: Path) -> None:
    """The README's first command, at reduced size: real ELPV images, the whole loop."""
    result = _cli("quickstart", "--per-class", "30", "--image-size", "32", "-o", "qs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" in result.stderr
    assert "ELPV" in result.stderr and "data check: 0 errors" in result.stderr
    assert "sweep." not in result.stderr.split("linear sweep:")[0]  # no warning about settings it chose itself
    metrics = json.loads((tmp_path / "qs" / "metrics.json").read_text())
    assert metrics["classes"] == ["defective", "functional"]
    assert "probe" in metrics and "knn" in metrics
    assert sum(1 for line in result.stderr.splitlines() if line.startswith("predict ")) >= 3


def test_evaluate_and_compare_commands(run, digits: Path, tmp_path: Path) -> None:
    result, _ = run
    out = _cli("evaluate", str(result.run_dir), str(digits), "-o", "ev", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = (tmp_path / "ev" / "report.html").read_text()
    assert "<img" in report and "base64," in report
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics  # the evaluation's own metrics file
    assert oct((tmp_path / "ev" / "report.html").stat().st_mode & 0o777) != "0o600"
    table = _cli("compare", str(result.run_dir), str(result.run_dir), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert result.run_dir.name in table.stdout


def test_export_and_serve_commands(run, digits: Path, tmp_path: Path) -> None:
    import socket
    import time
    import urllib.request

    result, _ = run
    out = _cli("export", str(result.run_dir), "-o", "exported", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "max |onnxruntime - torch|" in out.stdout and len(out.stdout.splitlines()) <= 6  # a short table
    report = json.loads((tmp_path / "exported" / "model.json").read_text())["metrics"]["export"]
    assert report["parity"]["within_goal"]  # the whole verification report is in the card
    assert (tmp_path / "exported" / "model.onnx").is_file()
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dinotune",
            "serve",
            str(tmp_path / "exported"),
            "--port",
            str(port),
            "max_batch_size=4",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not become ready")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=5) as response:
            info = json.loads(response.read())
        assert "classes" in json.dumps(info)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_train_finetune_config_and_resume_guard(digits: Path, tmp_path: Path) -> None:
    config = tmp_path / "ft.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "finetune",
                "backbone": {"source": "random:vit_test16"},
                "mode": "lora",
                "data": {"root": str(digits), "image_size": 16, "num_workers": 0, "augment": "none"},
                "batch_size": 64,
                "trainer": {"max_epochs": 1, "max_steps": 3},
                "out": "ft",
            }
        )
    )
    first = _cli("train", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "ft" / "model.json").is_file() and (tmp_path / "ft" / "backbone").is_dir()
    again = _cli("train", str(config), cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites a run silently


def test_pretrain_command_writes_a_loadable_backbone(digits: Path, tmp_path: Path) -> None:
    from dinotune import load_backbone

    config = Path(__file__).resolve().parents[2] / "configs" / "ssl_continuation.yaml"
    result = _cli(
        "pretrain",
        str(config),
        f"data.root={digits / 'train'}",
        "backbone.source=random:vit_test16",
        "data.batch_size=8",
        "data.num_workers=0",
        "crops.global_size=32",
        "crops.local_size=16",
        "crops.n_local=2",
        "trainer.max_steps=2",
        "trainer.max_epochs=1",
        "out=pt",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert load_backbone(tmp_path / "pt" / "backbone.pth").info.arch == "vit_test16"
    assert load_backbone(tmp_path / "pt" / "backbone_hf").info.arch == "vit_test16"


def test_segmentation_train_and_predict_commands(tmp_path: Path) -> None:
    from PIL import Image

    from dinotune.data.bundled import make_segmentation_dataset

    data = make_segmentation_dataset(tmp_path / "seg", n_images=24, size=32)
    config = tmp_path / "seg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "segment",
                "backbone": {"source": "random:vit_test16"},
                "data": {"root": str(data), "image_size": 32, "num_workers": 0, "augment": "none"},
                "trainer": {"max_epochs": 1},
                "inference": {"crop": 32, "stride": 16},
                "out": "segrun",
            }
        )
    )
    trained = _cli("train", str(config), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    report = (tmp_path / "segrun" / "report.html").read_text()
    assert "Per-class IoU" in report and report.count("base64,") >= 2  # IoU bars + overlays embedded
    images = sorted((data / "images").rglob("*.png"))[:2]
    predicted = _cli("predict", "segrun", *map(str, images), "-o", "masks", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    mask = Image.open(tmp_path / "masks" / "masks" / f"{images[0].stem}.png")
    assert mask.size == Image.open(images[0]).size and mask.mode == "P"
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("augment: none", "augment: none\n  weighted_sampler: true"))
    refused = _cli("train", str(bad), "out=other", cwd=tmp_path)
    assert refused.returncode == 2 and "loss.class_weights" in refused.stderr


def _probabilities(path: Path) -> dict[str, np.ndarray]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return {Path(r["file"]).name: np.array([float(v) for k, v in r.items() if k.startswith("p_")]) for r in rows}


def test_evaluate_and_predict_see_the_features_the_probe_was_trained_on(run, digits: Path, tmp_path: Path) -> None:
    """evaluate (270 test images: above the size where auto tries ONNX Runtime) and predict (10 images: below it)
    run the backbone through the same engine choice as the probe, so their probabilities equal the run's
    predictions.csv whichever engine each job kept (engines agree to 1e-4: the comparison allows that)."""
    from dinotune.evaluation.evaluate import evaluate
    from dinotune.features.engine import EXPORT_MIN_IMAGES

    result, _ = run
    reference = _probabilities(result.run_dir / "predictions.csv")
    assert len(reference) > EXPORT_MIN_IMAGES
    evaluate(result.run_dir, data=digits, out=tmp_path / "eval", report=False, temperature_scaling=False,
             progress=False)  # fmt: skip
    evaluated = _probabilities(next((tmp_path / "eval").glob("predictions_*.csv")))
    assert evaluated.keys() == reference.keys()
    for name, probs in evaluated.items():
        np.testing.assert_allclose(probs, reference[name], atol=1e-4)
    images = sorted((digits / "test").rglob("*.png"))[:10]
    for p in predict(result.run_dir, images, top_k=10):
        by_class = dict(p.top)
        classes = sorted(by_class)  # the probability columns follow the card's class order
        np.testing.assert_allclose([by_class[c] for c in classes],
                                   reference[p.path.name][[result.metrics["classes"].index(c) for c in classes]],
                                   atol=1e-4)  # fmt: skip


def test_predict_and_evaluate_go_through_the_engine_choice(run, digits: Path, monkeypatch) -> None:
    from dinotune.evaluation.evaluate import evaluate

    result, _ = run
    monkeypatch.setenv("DINOTUNE_ENGINE", "no-such-engine")  # read by features/engine.py only
    with pytest.raises(ConfigError, match="DINOTUNE_ENGINE"):
        predict(result.run_dir, sorted((digits / "test").rglob("*.png"))[:2])
    with pytest.raises(ConfigError, match="DINOTUNE_ENGINE"):
        evaluate(result.run_dir, data=digits, report=False, progress=False)


def test_sgd_settings_without_the_sgd_grid_are_named() -> None:
    from dinotune.verbs.probe import SweepConfig, unused_sgd_settings

    assert SweepConfig().methods == ["lbfgs"] and unused_sgd_settings(SweepConfig()) == []
    assert unused_sgd_settings(SweepConfig(epochs=10, lrs=[0.1])) == ["epochs", "lrs"]
    assert unused_sgd_settings(SweepConfig(epochs=10, methods=["lbfgs", "sgd"])) == []
