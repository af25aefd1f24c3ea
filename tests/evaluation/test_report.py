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
    assert "RANDOM WEIGHTS." in text and "TINY DATASET." in text  # random:vit_test16, 40 images
    assert "[applied]" in text and "on the validation split it" in text


def test_training_curves_are_read_from_the_lightning_log(model_dir: Path, tmp_path: Path) -> None:
    curves, x_key, resumed_at = read_training_curves(model_dir)
    assert x_key == "step" and set(curves) == {"train_loss", "val_loss", "val_accuracy"} and resumed_at == []
    np.testing.assert_allclose(curves["val_accuracy"][1], [0.40, 0.62, 0.71])
    assert read_training_curves(tmp_path) is None


def test_a_resumed_run_shows_its_whole_history(tmp_path: Path) -> None:
    """Interrupted after step 29, resumed from the checkpoint at step 19: steps 0-18 from the first log, the rest
    from the second (which ran step 19 onwards again); version_10 sorts after version_2."""
    header = "epoch,step,train/loss,train/lr_head,val/accuracy\n"
    logs = {0: "0,9,2.0,0.1,\n0,9,,,0.3\n1,19,1.8,0.1,\n1,29,1.7,0.1,\n", 2: "1,19,1.6,0.05,\n1,19,,,0.5\n",
            10: "2,39,1.2,0.01,\n2,39,,,0.7\n"}  # fmt: skip
    for version, rows in logs.items():
        (tmp_path / "logs" / f"version_{version}").mkdir(parents=True)
        (tmp_path / "logs" / f"version_{version}" / "metrics.csv").write_text(header + rows)
    curves, x_key, resumed_at = read_training_curves(tmp_path)
    np.testing.assert_allclose(curves["train/loss"][0], [9, 19, 39])
    np.testing.assert_allclose(curves["train/loss"][1], [2.0, 1.6, 1.2])
    np.testing.assert_allclose(curves["val/accuracy"][1], [0.3, 0.5, 0.7])
    assert resumed_at == [19, 39]
    from dinotune.report.plots import training_curves_figure

    fig = training_curves_figure(curves, x_key, resumed_at)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["Loss", "val/accuracy", "Learning rate"]  # the lr has its own axis, not the accuracy's
    assert fig.axes[2].get_yscale() == "log"


def test_temperature_is_applied_only_when_it_lowers_the_validation_ece() -> None:
    from dinotune.evaluation.calibration import choose_temperature, expected_calibration_error, softmax

    outcomes = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 3, 30)
        logits = rng.normal(0, 1, (30, 3))
        logits[np.arange(30), labels] += 1.5
        logits *= rng.uniform(0.5, 4)
        choice = choose_temperature(logits, labels)
        before = expected_calibration_error(softmax(logits), labels)
        after = expected_calibration_error(softmax(logits, choice.temperature), labels)
        assert choice.applied == (after < before) and choice.val_ece == pytest.approx(before)
        assert ("lowers" if choice.applied else "does not lower") in choice.reason
        outcomes.append(choice.applied)
    assert set(outcomes) == {True, False}  # both happen: fitting NLL does not always help the ECE


def test_unknown_class_is_a_clear_error(model_dir: Path, small_digits: Path, tmp_path: Path) -> None:
    shutil.copytree(small_digits / "test", tmp_path / "data" / "test")
    shutil.copytree(small_digits / "test" / "3", tmp_path / "data" / "test" / "cat")
    with pytest.raises(DataError, match=r"\['cat'\] are not classes of this model"):
        evaluate(model_dir, data=tmp_path / "data", out=tmp_path / "out", progress=False)


def _chromium(report: Path, *flags: str) -> subprocess.CompletedProcess:
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *flags, report.resolve().as_uri()]  # fmt: skip
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"Chromium could not start: {err}")


class _Rendered(HTMLParser):
    """Per section of the DOM Chromium rendered: its text and its images."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None
        self.text: dict[str, str] = {}
        self.images: dict[str, int] = {}
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.current, self.depth = dict(attrs).get("id") or "", 0
            self.text[self.current], self.images[self.current] = "", 0
        elif self.current is not None:
            self.depth += 1
            self.images[self.current] += tag == "img"

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.current is not None:
            self.text[self.current] += data


def test_report_renders_in_headless_chromium(evaluation: EvaluationResult, tmp_path: Path) -> None:
    """The page as a browser draws it: every section present with content under its heading, the random-weights
    banner drawn at the top (its colour in the screenshot), and plots (many colours)."""
    shot = tmp_path / "report.png"
    done = _chromium(evaluation.report_path, f"--screenshot={shot}", "--window-size=1280,4000")
    if not shot.is_file():
        pytest.skip(f"Chromium could not start (exit {done.returncode}): {done.stderr.strip()[-400:]}")
    dom = _chromium(evaluation.report_path, "--dump-dom").stdout
    rendered = _Rendered()
    rendered.feed(dom)
    assert list(rendered.text) == list(SECTIONS)
    for section, text in rendered.text.items():
        _title, _, body = text.strip().partition("\n")
        assert len(body.strip()) > 20 or rendered.images[section], f"section {section!r} is empty: {text!r}"
    assert "RANDOM WEIGHTS." in dom.split("<nav>")[0]  # above the table of contents
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels.std() > 20  # not a blank page
    banner = np.all(np.abs(pixels[:400] - (255, 244, 229)) < 3, axis=-1)  # the banner's background colour
    assert banner.sum() > 20_000, "no banner drawn at the top of the page"
    # plots rendered: many distinct colours (a page of text only has a few greys)
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 500
    shutil.copy(shot, Path(tempfile.gettempdir()) / "dinotune_report_screenshot.png")  # to look at


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
