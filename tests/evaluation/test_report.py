"""End to end: `evaluate` on a tiny model writes metrics.json and a complete, self-contained report."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinotune.errors import DataError
from dinotune.evaluation.evaluate import EvaluationResult, evaluate, read_training_curves
from dinotune.evaluation.report import SECTIONS


class _Parsed(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append(values.get("id") or "")
        if tag == "img":
            self.images.append(values.get("src") or "")
        for key in ("href", "src"):
            value = values.get(key) or ""
            if value and not value.startswith(("#", "data:")):
                self.urls.append(value)


@pytest.fixture(scope="module")
def evaluation(model_dir: Path, small_digits: Path, noise_images: Path, tmp_path_factory) -> EvaluationResult:
    shifted = tmp_path_factory.mktemp("shift") / "digits_test_only"
    shutil.copytree(small_digits / "test", shifted)  # no split folders: all images are evaluated
    return evaluate(
        model_dir,
        data=[small_digits, shifted],
        split="test",
        robustness=True,
        ood_data=noise_images,
        out=tmp_path_factory.mktemp("eval"),
        pgd_steps=2,
        max_robustness_images=20,
        progress=False,
    )


def test_metrics_json(evaluation: EvaluationResult) -> None:
    metrics = json.loads((evaluation.out / "metrics.json").read_text())
    main = metrics["datasets"][0]
    assert main["split"] == "test" and main["metrics"]["num_samples"] == 40
    assert len(main["metrics"]["per_class"]) == 10
    calibration = main["calibration"]
    assert calibration["bins"] == 15 and 0 <= calibration["ece"] <= 1 and calibration["temperature"] > 0
    assert [row["images"] for row in metrics["domain_shift"]] == [40, 40]
    assert metrics["datasets"][1]["split"] == "all"
    assert metrics["domain_shift"][0]["accuracy"] == pytest.approx(metrics["domain_shift"][1]["accuracy"])
    rows = metrics["robustness"]["rows"]
    assert len(rows) == 30 and {r["severity"] for r in rows} == {1, 2, 3, 4, 5}
    clean = metrics["robustness"]["clean_accuracy"]
    assert metrics["adversarial"]["num_samples"] == 20 and 0 <= clean <= 1
    assert all(r["relative"] == pytest.approx(r["accuracy"] / clean) for r in rows)
    assert set(metrics["ood"]["methods"]) == {"maximum softmax", "energy", "kNN distance"}
    assert metrics["ood"]["ood_images"] == 12 and metrics["ood"]["knn_reference_images"] == 60
    assert {"clean_accuracy", "fgsm_accuracy", "pgd_accuracy"} <= set(metrics["adversarial"])


def test_every_evaluated_dataset_gets_per_image_predictions(evaluation: EvaluationResult) -> None:
    """The domain-shift rows can be audited image by image, not only the main dataset."""
    import csv

    files = sorted(evaluation.out.glob("predictions_*.csv"))
    assert [f.name.split("_")[1] for f in files] == ["0", "1"]
    for path, dataset in zip(files, evaluation.metrics["datasets"], strict=True):
        rows = list(csv.DictReader(path.open()))
        assert len(rows) == dataset["metrics"]["num_samples"] == 40
        correct = sum(r["true"] == r["predicted"] for r in rows) / len(rows)
        assert correct == pytest.approx(dataset["metrics"]["accuracy"])


def test_report_has_every_section_and_only_embedded_pngs(evaluation: EvaluationResult) -> None:
    text = evaluation.report_path.read_text()
    parsed = _Parsed()
    parsed.feed(text)
    assert parsed.sections == list(SECTIONS)
    assert parsed.urls == []  # self-contained: no external files or URLs
    assert len(parsed.images) >= 9
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        payload = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert payload.startswith(b"\x89PNG")
        with Image.open(io.BytesIO(payload)) as image:
            image.verify()
    for heading in ("Most confident mistakes", "Training curves", "Patch features", "Robustness"):
        assert heading in text
    assert "No training curves" not in text  # the run has a Lightning CSV log


def test_training_curves_are_read_from_the_lightning_log(model_dir: Path, tmp_path: Path) -> None:
    curves, x_key = read_training_curves(model_dir)
    assert x_key == "step" and set(curves) == {"train_loss", "val_loss", "val_accuracy"}
    np.testing.assert_allclose(curves["val_accuracy"][1], [0.40, 0.62, 0.71])
    assert read_training_curves(tmp_path) is None


def test_unknown_class_is_a_clear_error(model_dir: Path, small_digits: Path, tmp_path: Path) -> None:
    shutil.copytree(small_digits / "test", tmp_path / "data" / "test")
    shutil.copytree(small_digits / "test" / "3", tmp_path / "data" / "test" / "cat")
    with pytest.raises(DataError, match=r"\['cat'\] are not classes of this model"):
        evaluate(model_dir, data=tmp_path / "data", out=tmp_path / "out", progress=False)


def test_report_renders_in_headless_chromium(evaluation: EvaluationResult, tmp_path: Path) -> None:
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1280,4000",
            evaluation.report_path.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"Chromium could not start: {err}")
    if not shot.is_file():
        pytest.skip(f"Chromium could not start (exit {done.returncode}): {done.stderr.strip()[-400:]}")
    assert shot.stat().st_size > 100_000
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels.std() > 20  # not a blank page
    # plots rendered: many distinct colours (a page of text only has a few greys)
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 500


def test_multilabel_model_gets_a_report_with_reasons(small_digits: Path, tmp_path: Path) -> None:
    import torch

    from dinotune.heads.linear import LinearHead
    from dinotune.model import Classifier, ModelCard, load_model, save_model

    images = sorted((small_digits / "test").rglob("*.png"))[:12]
    names = ("a;b", "c", "a")
    lines = ["path,label"] + [f"{p},{names[i % 3]}" for i, p in enumerate(images)]
    (tmp_path / "labels.csv").write_text("\n".join(lines))
    from tests.evaluation.conftest import make_model_folder

    base = make_model_folder(tmp_path / "base", ["a", "b", "c"])
    model, card = load_model(base, device="cpu")
    dim = model.backbone.embed_dim
    head = LinearHead(torch.randn(3, dim), torch.zeros(3), torch.zeros(dim), torch.ones(dim), multilabel=True)
    card = ModelCard(
        task="multilabel", classes=["a", "b", "c"], preprocessing=card.preprocessing, backbone=card.backbone, head={}
    )
    save_model(tmp_path / "ml", Classifier(model.backbone, head), card)
    result = evaluate(tmp_path / "ml", data=tmp_path / "labels.csv", out=tmp_path / "out", progress=False)
    assert result.metrics["datasets"][0]["split"] == "all"
    assert "map" in result.metrics["summary"]
    parsed = _Parsed()
    parsed.feed(result.report_path.read_text())
    assert parsed.sections == list(SECTIONS)
    assert "Calibration is reported for single-label models only" in result.report_path.read_text()
