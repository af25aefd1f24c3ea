"""`dinotune evaluate`: one run, one or more datasets -> `metrics.json` + a self-contained `report.html`.

The first dataset gets the full report; every dataset (domain shift: the same classes photographed
elsewhere, another scanner, another season) gets a row in one comparison table. Data without split
folders is split exactly as in training when the run's `splits.json` was made for that folder;
otherwise all of its images are evaluated (the report says which).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.atomic import write_text
from dinotune.data.formats import Sample, list_images
from dinotune.errors import DataError
from dinotune.evaluation import calibration as cal
from dinotune.evaluation import ood as ood_scores
from dinotune.evaluation.predict import Predictions, load_run_dataset, predict, samples_for_model, write_predictions
from dinotune.evaluation.report import build_report
from dinotune.evaluation.results import DatasetResult, EvaluationResult
from dinotune.evaluation.robustness import DEFAULT_EPSILON, adversarial_accuracy, run_corruptions
from dinotune.evaluation.views import display_images, feature_projections, patch_pca
from dinotune.metrics import classification_metrics, multilabel_metrics
from dinotune.model import Classifier, ModelCard, load_model

__all__ = ["DatasetResult", "EvaluationResult", "evaluate", "read_training_curves"]

log = logging.getLogger(__name__)
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "map", "f1_micro", "auroc_macro")


def _samples(run: Path, root: Path, split: str, classes: Sequence[str]) -> tuple[list[Sample], str, str]:
    """(samples in the model's class order, split actually used, note for the report)."""
    spec, note = load_run_dataset(run, root, "classify")
    if set(spec.splits) == {"all"}:
        return samples_for_model(spec, "all", classes), "all", note
    return samples_for_model(spec, split, classes), split, note


def _metrics(pred: Predictions, card: ModelCard) -> dict[str, Any]:
    import torch

    probs, labels = torch.from_numpy(pred.probs), torch.from_numpy(pred.labels)
    if card.multilabel:
        return multilabel_metrics(probs, labels, card.classes)
    return classification_metrics(probs, labels, card.classes)


def _calibrate(result: DatasetResult, val: Predictions | None, fit: bool) -> None:
    pred = result.predictions
    rel = cal.reliability(pred.probs, pred.labels)
    result.reliability = rel
    info: dict[str, Any] = {
        "ece": rel.ece,
        "bins": cal.N_BINS,
        "nll": cal.negative_log_likelihood(pred.logits, pred.labels),
    }
    if fit and val is not None:
        choice = cal.choose_temperature(val.logits, val.labels)
        t = choice.temperature
        result.reliability_scaled = cal.reliability(cal.softmax(pred.logits, t), pred.labels)
        info.update(
            temperature=t,
            ece_scaled=result.reliability_scaled.ece,
            nll_scaled=cal.negative_log_likelihood(pred.logits, pred.labels, t),
            temperature_applied=choice.applied,
            val_ece=choice.val_ece,
            val_ece_scaled=choice.val_ece_scaled,
            temperature_reason=choice.reason,
        )
    result.calibration = info


def _log_version(path: Path) -> int:
    name = path.parent.name
    return int(name.split("_", 1)[1]) if name.startswith("version_") and name[8:].isdigit() else -1


def _read_history(files: list[Path]) -> tuple[list[dict[str, str]], list[float]]:
    """The rows of every log of the run, in order: a resumed run (a new `version_N`) replaces the rows from
    the step it resumed at onwards (the steps after its checkpoint were run again). Also the resume steps."""
    history: list[dict[str, str]] = []
    resumed_at: list[float] = []
    for path in sorted(files, key=lambda f: (_log_version(f), str(f))):
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        steps = [float(r["step"]) for r in rows if r.get("step") not in ("", None)]
        if history and steps:
            history = [r for r in history if r.get("step") in ("", None) or float(r["step"]) < min(steps)]
            resumed_at.append(min(steps))
        history += rows
    return history, resumed_at


def read_training_curves(run: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str, list[float]] | None:
    """Curves from the run's Lightning CSV logs (`logs/version_*/metrics.csv`, one per start or resume, read as
    one history), the x key, and the steps where the run was resumed; None when there is no log.

    Lightning writes one sparse row per logging call; each column becomes a curve over the rows where
    it has a value, against `step` (or `epoch` if the log has no steps).
    """
    rows, resumed_at = _read_history(list(Path(run).glob("logs/**/metrics.csv")))
    if not rows:
        return None
    x_key = "step" if "step" in rows[0] else "epoch"
    curves = {}
    for column in dict.fromkeys(k for r in rows for k in r):
        if column in ("step", "epoch"):
            continue
        try:
            points = [
                (float(r[x_key]), float(r[column]))
                for r in rows
                if r.get(column) not in ("", None) and r.get(x_key) not in ("", None)
            ]
        except ValueError:  # a text column (e.g. a logged name): not a curve
            continue
        if points:
            xs, ys = zip(*points, strict=True)
            curves[column] = (np.asarray(xs), np.asarray(ys))
    return (curves, x_key, resumed_at if x_key == "step" else []) if curves else None


def _few_per_class(samples: Sequence[Sample], count: int) -> list[Sample]:
    """Up to `count` samples, round-robin over classes, so the picture shows several classes."""
    by_class: dict[Any, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(str(s.label), []).append(s)
    picked: list[Sample] = []
    for i in range(count):
        for group in by_class.values():
            if i < len(group) and len(picked) < count:
                picked.append(group[i])
    return picked


def _summary(result: DatasetResult) -> dict[str, Any]:
    row = {k: result.metrics[k] for k in SUMMARY_KEYS if k in result.metrics}
    if result.calibration:
        row["ece"] = result.calibration["ece"]
    return {"dataset": result.name, "split": result.split, "images": len(result.predictions), **row}


def evaluate(
    run: str | Path,
    *,
    data: str | Path | Sequence[str | Path],
    split: str = "test",
    out: str | Path | None = None,
    robustness: bool = False,
    ood_data: str | Path | None = None,
    temperature_scaling: bool = True,
    epsilon: float = DEFAULT_EPSILON,
    pgd_steps: int = 10,
    max_robustness_images: int | None = 500,
    max_reference_images: int = 5000,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
    report: bool = True,
) -> EvaluationResult:
    """Evaluate the classifier in `run` (a run, model or export folder) on `data` (one folder, or
    several for a domain-shift table); writes `<out>/metrics.json`, `<out>/predictions_<n>.csv` and
    `<out>/report.html` (default out: RUN/evaluation; `dinotune evaluate` stages it so it is never half written).

    `epsilon` is the FGSM/PGD L-inf radius in normalised-pixel space (see evaluation/robustness.py).
    Robustness uses at most `max_robustness_images` images of the split (None: all); the kNN OOD score
    compares with at most `max_reference_images` training images. An ONNX export has no gradients and no
    patch tokens: its report leaves out the adversarial and patch-PCA sections and says so.
    """
    run = Path(run)
    out_dir = Path(out) if out is not None else run / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    model, card = load_model(run, device=None if device in (None, "auto") else device)
    if card.task not in ("classify", "multilabel"):
        raise DataError(f"{run}: this evaluation is for classifiers (this model's task is '{card.task}').")
    roots = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    if not roots:
        raise DataError("evaluate needs a dataset folder: dinotune evaluate RUN DATA.")
    results = [
        _dataset_result(run, model, card, root, split, n == 0 and temperature_scaling, batch_size, progress)
        for n, root in enumerate(roots)
    ]
    main = results[0]
    ev = EvaluationResult(run, out_dir, card, results, _metrics_json(run, card, results))
    main_samples = _samples(run, main.root, main.split, card.classes)[0]
    torch_model = isinstance(model, Classifier)
    if robustness and not card.multilabel:
        attack = (epsilon, pgd_steps) if torch_model else None
        _robustness(ev, model, card, main_samples, max_robustness_images, batch_size, progress, attack)
    if ood_data is not None:
        ev.metrics["ood"] = _ood(ev, model, card, Path(ood_data), max_reference_images, batch_size, progress)
    _pictures(ev, model, card, main_samples, patches=torch_model)
    write_text(out_dir / "metrics.json", json.dumps(ev.metrics, indent=2, default=str))
    for n, result in enumerate(results):
        pred = result.predictions
        write_predictions(out_dir / f"predictions_{n}_{result.name}.csv", pred.paths, pred.labels, pred.probs,
                          card.classes, card.multilabel)  # fmt: skip
    if report:
        ev.report_path = build_report(ev).write(out_dir / "report.html")
    return ev


def _metrics_json(run: Path, card: ModelCard, results: list[DatasetResult]) -> dict[str, Any]:
    """What metrics.json holds before robustness and OOD are added."""
    datasets = [{"name": r.name, "root": str(r.root), "split": r.split, "note": r.note, "metrics": r.metrics,
                 "calibration": r.calibration} for r in results]  # fmt: skip
    metrics = {"run": str(run), "task": card.task, "classes": card.classes, "multilabel": card.multilabel,
               "report_split": results[0].split, "summary": _summary(results[0]), "datasets": datasets}  # fmt: skip
    if len(results) > 1:
        metrics["domain_shift"] = [_summary(r) for r in results]
    return metrics


def _robustness(
    ev: EvaluationResult,
    model: Any,
    card: ModelCard,
    samples: list[Sample],
    limit: int | None,
    batch_size: int,
    progress: bool,
    attack: tuple[float, int] | None,
) -> None:
    """Corruptions (and, for a PyTorch model, FGSM/PGD at `attack` = (epsilon, steps)) on a spread subset."""
    subset = samples[:: max(1, -(-len(samples) // limit))] if limit else samples
    ev.metrics["robustness"] = run_corruptions(model, card, subset, batch_size=batch_size, progress=progress)
    if attack is not None:
        ev.metrics["adversarial"] = adversarial_accuracy(
            model, card, subset, epsilon=attack[0], pgd_steps=attack[1], progress=progress
        )


def _dataset_result(
    run: Path,
    model: Any,
    card: ModelCard,
    root: Path,
    split: str,
    fit_temperature: bool,
    batch_size: int,
    progress: bool,
) -> DatasetResult:
    """Predictions, metrics and calibration of one dataset (temperature fitted on its val split)."""
    samples, used, note = _samples(run, root, split, card.classes)
    pred = predict(model, card, samples, batch_size=batch_size, progress=progress, desc=f"{root.name} {used}")
    result = DatasetResult(root.name, root, used, note, pred, _metrics(pred, card))
    if not card.multilabel:
        val = None
        if fit_temperature and used not in ("val", "all"):
            try:
                val_samples = _samples(run, root, "val", card.classes)[0]
                val = predict(model, card, val_samples, batch_size=batch_size, progress=progress, desc="val")
            except DataError as err:
                log.warning("no temperature scaling: %s", err)
        _calibrate(result, val, fit_temperature)
    return result


def _ood(
    ev: EvaluationResult,
    model: Classifier,
    card: ModelCard,
    root: Path,
    max_reference: int,
    batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Max-softmax, energy and kNN-distance scores of the main split (ID) against every image in `root`."""
    images = list_images(root) if root.is_dir() else []
    if not images:
        raise DataError(f"--ood-data {root}: no images found; pass a folder of out-of-distribution images.")
    main = ev.datasets[0]
    ood = predict(
        model, card, [Sample(p, None) for p in images], batch_size=batch_size, progress=progress, desc="OOD images"
    )
    scores = {
        "maximum softmax": (
            ood_scores.max_softmax_score(main.predictions.logits),
            ood_scores.max_softmax_score(ood.logits),
        ),
        "energy": (ood_scores.energy_score(main.predictions.logits), ood_scores.energy_score(ood.logits)),
    }
    result: dict[str, Any] = {"ood_root": str(root), "ood_images": len(ood), "id_images": len(main.predictions)}
    try:
        train = _samples(ev.run, main.root, "train", card.classes)[0]
        if main.split == "all":
            raise DataError("the in-distribution images are all of the folder; no separate training images")
        train = train[:: max(1, -(-len(train) // max_reference))]
        ref = predict(model, card, train, batch_size=batch_size, progress=progress, desc="kNN reference")
        result["knn_reference_images"] = len(ref)
        scores["kNN distance"] = (
            ood_scores.knn_distance_score(ref.features, main.predictions.features),
            ood_scores.knn_distance_score(ref.features, ood.features),
        )
    except DataError as err:
        result["knn_skipped"] = str(err)
    result["methods"] = {name: ood_scores.ood_metrics(a, b) for name, (a, b) in scores.items()}
    ev.ood_scores = scores
    return result


def _pictures(ev: EvaluationResult, model: Any, card: ModelCard, samples: list[Sample], patches: bool) -> None:
    """Arrays for the report's pictures: curves, feature projections, mistakes, patch PCA."""
    main = ev.datasets[0]
    curves = read_training_curves(ev.run)
    if curves is not None:
        ev.curves, ev.curve_x, ev.resumed_at = curves
    if len(main.predictions) >= 3:
        ev.projections = feature_projections(main.predictions.features)
    by_path = {str(s.path): s for s in samples}
    if not card.multilabel:
        pred = main.predictions
        wrong = np.flatnonzero(pred.predicted != pred.labels)
        wrong = wrong[np.argsort(-pred.probs[wrong].max(1), kind="stable")][:12]
        picked = [by_path[pred.paths[i]] for i in wrong if pred.paths[i] in by_path]
        images = display_images(model, card, picked)
        ev.mistakes = [
            (img, card.classes[int(pred.labels[i])], card.classes[int(pred.predicted[i])], float(pred.probs[i].max()))
            for img, i in zip(images, wrong, strict=False)
        ]
    few = _few_per_class(samples, 8)
    if few and patches:
        images, maps = patch_pca(model, card, few)
        titles = [
            card.classes[s.label] if isinstance(s.label, int) and s.label >= 0 else Path(s.path).name for s in few
        ]
        ev.patches = (images, maps, titles)
