"""`dinotune probe` / `dinotune knn`: classifiers on frozen DINOv3 features, the fastest path to an answer.

Features are extracted once into the content-keyed cache, then a grid of linear heads is trained in one
pass per epoch and the weighted kNN is evaluated on the same features. The run folder holds everything a
person or a later command needs: the resolved config, the deployable model, metrics and predictions.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from dinotune.backbones import Backbone, load_backbone
from dinotune.config import BackboneConfig, StrictModel, cache_home, save_resolved
from dinotune.data.config import DataConfig
from dinotune.data.formats import DatasetSpec, load_dataset
from dinotune.data.preprocessing import Preprocessing
from dinotune.device import default_workers
from dinotune.errors import DataError
from dinotune.features.cache import FeatureCache
from dinotune.metrics import classification_metrics, multilabel_metrics
from dinotune.model import Classifier, ModelCard, save_model
from dinotune.tasks.knn import DEFAULT_KS, DEFAULT_TEMPERATURE, knn_classify
from dinotune.tasks.probe import DEFAULT_LRS, DEFAULT_WEIGHT_DECAYS, FeatureSet, SweepResult, sweep_linear_heads
from dinotune.verbs.runs import RunLog, new_run_dir, write_json

log = logging.getLogger(__name__)


class SweepConfig(StrictModel):
    enabled: bool = Field(True, description="Train the grid of linear heads.")
    lrs: list[float] = Field(default_factory=lambda: list(DEFAULT_LRS), description="Learning-rate grid.")
    weight_decays: list[float] = Field(default_factory=lambda: list(DEFAULT_WEIGHT_DECAYS))
    feature_choices: list[str] | None = Field(None, description="e.g. [cls, cls+patch_mean]; default: all available.")
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(256, ge=1)
    patience: int | None = Field(10, ge=1, description="Evaluations without improvement before a head stops.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class KnnConfig(StrictModel):
    enabled: bool = True
    ks: list[int] = Field(default_factory=lambda: list(DEFAULT_KS))
    temperature: float = Field(DEFAULT_TEMPERATURE, gt=0)
    feature: str = Field("cls", description="Feature kind used for the neighbour search.")


class ProbeConfig(StrictModel):
    task: Literal["probe"] = "probe"
    data: DataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    knn: KnnConfig = Field(default_factory=KnnConfig)
    out: Path | None = Field(None, description="Run folder (default: runs/probe-<time>).")
    extract_batch_size: int = Field(64, ge=1)
    cache_dir: Path | None = Field(None, description="Feature cache (default: $DINOTUNE_HOME/features).")
    device: str = "auto"
    seed: int = 0
    progress: bool = True


@dataclass
class ProbeResult:
    run_dir: Path
    metrics: dict[str, Any]
    sweep: SweepResult | None


def _preprocessing(cfg: ProbeConfig, backbone: Backbone) -> Preprocessing:
    if cfg.data.resize == "keep":
        raise DataError("data.resize=keep gives images of different sizes; probes need crop or pad.")
    size = max(backbone.input_multiple, cfg.data.image_size // backbone.input_multiple * backbone.input_multiple)
    return Preprocessing(
        image_size=size, resize=cfg.data.resize, channels=cfg.data.channels,
        mean=tuple(cfg.data.mean or backbone.info.mean), std=tuple(cfg.data.std or backbone.info.std),
        scaling=cfg.data.scaling.model_dump(exclude_none=True) if cfg.data.scaling.mode != "fixed"
        or cfg.data.scaling.divisor else {},
    )


def _labels(samples: list, spec: DatasetSpec) -> torch.Tensor:
    if spec.multilabel:
        out = torch.zeros(len(samples), spec.num_classes)
        for row, sample in enumerate(samples):
            out[row, list(sample.label)] = 1.0
        return out
    return torch.tensor([int(s.label) for s in samples], dtype=torch.long)


def extract_splits(cfg: ProbeConfig, spec: DatasetSpec, backbone: Backbone, prep: Preprocessing,
                   run: RunLog) -> tuple[dict[str, FeatureSet], dict[str, list[Path]]]:
    cache = FeatureCache(cfg.cache_dir or cache_home() / "features", backbone, prep)
    sets, paths = {}, {}
    for split, samples in spec.splits.items():
        if not samples:
            continue
        by_path = {s.path: s for s in samples}
        got = cache.get(list(by_path), batch_size=cfg.extract_batch_size,
                        num_workers=min(cfg.data.num_workers, default_workers()), progress=cfg.progress)
        for bad, reason in got.bad_files.items():
            run.warn(f"{split}: skipped unreadable {bad}: {reason}")
        kept = [by_path[p] for p in got.paths]
        sets[split] = FeatureSet(got.features, _labels(kept, spec))
        paths[split] = got.paths
        run.info(f"{split}: {len(kept)} images ({got.extracted} newly extracted, {len(kept) - got.extracted} cached)")
    if "train" not in sets or "val" not in sets:
        raise DataError(f"'{cfg.data.root}' needs train and val images (found splits: {sorted(sets)}); "
                        "use split folders or let dinotune split one folder (data.val_fraction).")
    return sets, paths


def run_probe(cfg: ProbeConfig, backbone: Backbone | None = None) -> ProbeResult:
    start = time.perf_counter()
    run_dir = cfg.out or new_run_dir("probe")
    run = RunLog(run_dir)
    save_resolved(cfg, run_dir)
    spec = load_dataset(cfg.data.root, task="classify", layout=cfg.data.layout, val_fraction=cfg.data.val_fraction,
                        test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed,
                        split_file=cfg.data.split_file or run_dir / "splits.json", csv_file=cfg.data.csv_file)
    if spec.task != "classify":
        raise DataError(f"'{cfg.data.root}' looks like a {spec.task} dataset; probes need class labels.")
    if backbone is None:
        backbone = load_backbone(cfg.backbone.source, arch=cfg.backbone.arch, in_chans=cfg.data.channels,
                                 device=None if cfg.device == "auto" else cfg.device, seed=cfg.seed)
    prep = _preprocessing(cfg, backbone)
    run.info(f"backbone {backbone.info.arch} ({backbone.info.source}), {len(spec.classes)} classes, "
             f"{prep.image_size}px")
    sets, paths = extract_splits(cfg, spec, backbone, prep, run)
    report_split = "test" if "test" in sets else "val"
    metrics: dict[str, Any] = {"classes": spec.classes, "report_split": report_split,
                               "counts": {k: len(v) for k, v in sets.items()}}
    sweep = None
    if cfg.sweep.enabled:
        sweep = _sweep(cfg, spec, sets)
        metrics["probe"] = _probe_metrics(sweep, sets, spec, report_split)
        model = Classifier(backbone, sweep.linear_head())
        card = ModelCard(task="classify", classes=spec.classes, preprocessing=prep, multilabel=spec.multilabel,
                         backbone={"source": backbone.info.source, "arch": backbone.info.arch,
                                   "in_chans": backbone.info.in_chans, "seed": cfg.seed,
                                   "identity": backbone.info.identity},
                         head={}, license=backbone.info.license, metrics=metrics["probe"]["summary"])
        save_model(run_dir, model, card)
        _write_sweep_table(run_dir / "sweep.csv", sweep)
        write_predictions(run_dir / "predictions.csv", paths[report_split], sets[report_split].labels,
                           model.head.predict_proba(_inputs(sets[report_split], sweep)), spec)
    if cfg.knn.enabled:
        metrics["knn"] = _knn_metrics(cfg, sets, spec)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    write_json(run_dir / "metrics.json", metrics)
    run.info(summary_line(metrics))
    return ProbeResult(run_dir, metrics, sweep)


def _sweep(cfg: ProbeConfig, spec: DatasetSpec, sets: dict[str, FeatureSet]) -> SweepResult:
    class_weights = None
    if cfg.data.class_weights:
        from dinotune.data.datasets import class_weights as weights_for

        class_weights = weights_for([s.label for s in spec.splits["train"]], spec.num_classes)
    return sweep_linear_heads(
        sets["train"], sets["val"], sets.get("test"), lrs=cfg.sweep.lrs, weight_decays=cfg.sweep.weight_decays,
        feature_choices=cfg.sweep.feature_choices, epochs=cfg.sweep.epochs, batch_size=cfg.sweep.batch_size,
        patience=cfg.sweep.patience, multilabel=spec.multilabel, num_classes=spec.num_classes,
        class_weights=class_weights, label_smoothing=cfg.sweep.label_smoothing, class_names=spec.classes,
        seed=cfg.seed, device=None if cfg.device == "auto" else cfg.device, progress=cfg.progress,
    )


def _inputs(split: FeatureSet, sweep: SweepResult) -> torch.Tensor:
    from dinotune.tasks.probe import build_input

    return build_input(split.features, sweep.best.feature_choice)


def _evaluate(probs: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec) -> dict[str, Any]:
    if spec.multilabel:
        return multilabel_metrics(probs, labels, spec.classes)
    return classification_metrics(probs, labels, spec.classes)


def _probe_metrics(sweep: SweepResult, sets: dict[str, FeatureSet], spec: DatasetSpec, split: str) -> dict:
    head = sweep.linear_head()
    probs = head.predict_proba(_inputs(sets[split], sweep))
    detail = _evaluate(probs, sets[split].labels, spec)
    key = "map" if spec.multilabel else "accuracy"
    return {"best_head": sweep.best.as_dict(), "heads_trained": len(sweep.table), "epochs_run": sweep.epochs_run,
            "summary": {f"{split}/{key}": detail[key], "val/" + sweep.metric: sweep.best.val_score}, split: detail}


def _knn_metrics(cfg: ProbeConfig, sets: dict[str, FeatureSet], spec: DatasetSpec) -> dict[str, Any]:
    kind = cfg.knn.feature
    bank = sets["train"]
    out: dict[str, Any] = {"feature": kind, "temperature": cfg.knn.temperature}
    for split in ("val", "test"):
        if split not in sets:
            continue
        result = knn_classify(bank.features[kind], bank.labels, sets[split].features[kind], ks=cfg.knn.ks,
                              temperature=cfg.knn.temperature, num_classes=spec.num_classes)
        key = "map" if spec.multilabel else "accuracy"
        out[split] = {f"k={k}": _evaluate(result.probs[k], sets[split].labels, spec)[key] for k in cfg.knn.ks}
    return out


def summary_line(metrics: dict[str, Any]) -> str:
    parts = []
    if "probe" in metrics:
        parts.append("linear probe " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["probe"]["summary"].items()))
    if "knn" in metrics:
        split = metrics["report_split"]
        best = max(metrics["knn"][split].items(), key=lambda kv: kv[1])
        parts.append(f"kNN {split} best {best[0]} {best[1]:.4f}")
    return "; ".join(parts)


def _write_sweep_table(path: Path, sweep: SweepResult) -> None:
    from dinotune.atomic import atomic_path

    rows = sweep.table_rows()
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_predictions(path: Path, paths: list[Path], labels: torch.Tensor, probs: torch.Tensor,
                       spec: DatasetSpec) -> None:
    from dinotune.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "true", "predicted", *[f"p_{c}" for c in spec.classes]])
        for file, label, row in zip(paths, labels, probs, strict=True):
            if spec.multilabel:
                true = ";".join(spec.classes[i] for i in torch.nonzero(label).flatten().tolist())
                pred = ";".join(spec.classes[i] for i in torch.nonzero(row > 0.5).flatten().tolist())
            else:
                true, pred = spec.classes[int(label)], spec.classes[int(row.argmax())]
            writer.writerow([str(file), true, pred, *[f"{p:.6f}" for p in row.tolist()]])


def probe(data: str | Path, backbone: str | Backbone | None = None, **options: Any) -> ProbeResult:
    """Python API of `dinotune probe`: options are ProbeConfig fields, `data` may be a path or a dict."""
    from dinotune.config import validate

    values: dict[str, Any] = {"data": data if isinstance(data, dict) else {"root": data}, **options}
    if isinstance(backbone, str):
        values["backbone"] = {"source": backbone}
    loaded = None if backbone is None or isinstance(backbone, str) else backbone
    return run_probe(validate(ProbeConfig, values), backbone=loaded)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
