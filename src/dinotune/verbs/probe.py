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
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from dinotune.backbones import Backbone, load_backbone
from dinotune.config import BackboneConfig, StrictModel, cache_home, save_resolved
from dinotune.data.config import DataConfig
from dinotune.data.formats import DatasetSpec, load_dataset
from dinotune.data.preflight import preflight
from dinotune.data.preprocessing import Preprocessing
from dinotune.device import default_workers
from dinotune.errors import DataError
from dinotune.evaluation.predict import write_predictions
from dinotune.features.cache import FeatureCache
from dinotune.metrics import best_threshold, classification_metrics, multilabel_metrics
from dinotune.model import Classifier, ModelCard, save_model
from dinotune.run_folder import RunLog, new_run_dir, staged_output, write_json
from dinotune.tasks.knn import DEFAULT_KS, DEFAULT_TEMPERATURES, knn_classify, select_knn
from dinotune.tasks.probe import (
    DEFAULT_CS,
    DEFAULT_LRS,
    DEFAULT_METHODS,
    DEFAULT_WEIGHT_DECAYS,
    FeatureSet,
    SweepResult,
    sweep_linear_heads,
)
from dinotune.verbs.common import Result, backbone_source, preprocessing_for, resolve_channels

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
    methods: list[Literal["sgd", "lbfgs"]] = Field(
        default_factory=lambda: list(DEFAULT_METHODS),
        description="The L-BFGS C path (default) and/or the SGD head grid (add sgd to train it too).",
    )
    cs: list[float] = Field(default_factory=lambda: list(DEFAULT_CS), description="L-BFGS C grid (as scikit-learn's).")
    selection: Literal["score_within_se", "score", "loss"] = Field(
        "score_within_se", description="Rule choosing the kept head on validation."
    )
    refit: bool = Field(False, description="Refit an L-BFGS winner on train+val (then val is no longer held out).")


SGD_ONLY_FIELDS = frozenset({"lrs", "weight_decays", "epochs", "batch_size", "patience"})


def unused_sgd_settings(sweep: SweepConfig) -> list[str]:
    """The SGD-grid settings a user gave although `sweep.methods` trains no SGD heads (they would do nothing)."""
    return [] if "sgd" in sweep.methods else sorted(SGD_ONLY_FIELDS & sweep.model_fields_set)


class KnnConfig(StrictModel):
    enabled: bool = True
    ks: list[int] = Field(default_factory=lambda: list(DEFAULT_KS))
    temperatures: list[float] = Field(
        default_factory=lambda: list(DEFAULT_TEMPERATURES), description="Vote temperatures; chosen on val with k."
    )
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


def _preprocessing(cfg: ProbeConfig, backbone: Backbone) -> Preprocessing:
    if cfg.data.resize == "keep":
        raise DataError("data.resize=keep gives images of different sizes; probes need crop or pad.")
    return preprocessing_for(cfg.data, backbone)


def _labels(samples: list, spec: DatasetSpec) -> torch.Tensor:
    if spec.multilabel:
        out = torch.zeros(len(samples), spec.num_classes)
        for row, sample in enumerate(samples):
            out[row, list(sample.label)] = 1.0
        return out
    return torch.tensor([int(s.label) for s in samples], dtype=torch.long)


def extract_splits(
    cfg: ProbeConfig, spec: DatasetSpec, backbone: Backbone, prep: Preprocessing, run: RunLog
) -> tuple[dict[str, FeatureSet], dict[str, list[Path]]]:
    cache = FeatureCache(cfg.cache_dir or cache_home() / "features", backbone, prep)
    sets, paths = {}, {}
    for split, samples in spec.splits.items():
        if not samples:
            continue
        by_path = {s.path: s for s in samples}
        got = cache.get(
            list(by_path),
            batch_size=cfg.extract_batch_size,
            num_workers=min(cfg.data.num_workers, default_workers()),
            progress=cfg.progress,
        )
        for bad, reason in got.bad_files.items():
            run.warn(f"{split}: skipped unreadable {bad}: {reason}")
        kept = [by_path[p] for p in got.paths]
        sets[split] = FeatureSet(got.features, _labels(kept, spec))
        paths[split] = got.paths
        run.info(f"{split}: {len(kept)} images ({got.extracted} newly extracted, {len(kept) - got.extracted} cached)")
    if "train" not in sets or "val" not in sets:
        raise DataError(
            f"'{cfg.data.root}' needs train and val images (found splits: {sorted(sets)}); "
            "use split folders or let dinotune split one folder (data.val_fraction)."
        )
    return sets, paths


def run_probe(cfg: ProbeConfig, backbone: Backbone | None = None, overwrite: bool = False) -> Result:
    """Features -> sweep + kNN -> a run folder, written whole or not at all (`overwrite` replaces one)."""
    start = time.perf_counter()
    run_dir = Path(cfg.out or new_run_dir("probe" if cfg.sweep.enabled else "knn"))
    with staged_output(run_dir, overwrite=overwrite, keep=[cfg.data.root]) as stage:
        metrics = _probe_into(cfg, stage, backbone)
        metrics["train_seconds"] = round(time.perf_counter() - start, 2)
        write_json(stage / "metrics.json", metrics)
    log.info(summary_line(metrics))
    return Result(run_dir, metrics)


def _probe_into(cfg: ProbeConfig, stage: Path, backbone: Backbone | None) -> dict[str, Any]:
    run = RunLog(stage)
    save_resolved(cfg, stage)
    if backbone is None:
        torch.manual_seed(cfg.seed)
        backbone = load_backbone(
            cfg.backbone.source,
            arch=cfg.backbone.arch,
            in_chans=resolve_channels(cfg.data, cfg.backbone),
            device=None if cfg.device == "auto" else cfg.device,
            seed=cfg.seed,
        )
    spec = load_dataset(
        cfg.data.root,
        task="classify",
        layout=cfg.data.layout,
        val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.data.split_seed,
        split_file=cfg.data.split_file or stage / "splits.json",
        csv_file=cfg.data.csv_file,
        group_by=cfg.data.group_by,
        volumes=cfg.data.volumes,
        slice_axis=cfg.data.scaling.slice_axis,
    )
    if spec.task != "classify":
        raise DataError(f"'{cfg.data.root}' holds '{spec.task}' data; probes need class labels.")
    preflight(spec, cfg.data, channels=backbone.info.in_chans)  # dataset-level problems before any extraction
    prep = _preprocessing(cfg, backbone)
    run.info(
        f"backbone {backbone.info.arch} ({backbone.info.source}), {len(spec.classes)} classes, {prep.image_size}px"
    )
    sets, paths = extract_splits(cfg, spec, backbone, prep, run)
    report_split = "test" if "test" in sets else "val"
    task = "multilabel" if spec.multilabel else "classify"
    metrics: dict[str, Any] = {
        "task": task,
        "classes": spec.classes,
        "report_split": report_split,
        "counts": {k: len(v) for k, v in sets.items()},
    }
    if cfg.sweep.enabled:
        _save_probe(cfg, stage, backbone, spec, prep, sets, paths, metrics)
    if cfg.knn.enabled:
        metrics["knn"] = _knn_metrics(cfg, sets, spec)
    metrics["summary"] = metrics["probe"]["summary"] if cfg.sweep.enabled else metrics["knn"]["summary"]
    return metrics


def _save_probe(
    cfg: ProbeConfig,
    stage: Path,
    backbone: Backbone,
    spec: DatasetSpec,
    prep: Preprocessing,
    sets: dict[str, FeatureSet],
    paths: dict[str, list[Path]],
    metrics: dict[str, Any],
) -> None:
    """Sweep, keep the best head as the run's model, write sweep.csv and predictions.csv; fills `metrics`."""
    split = metrics["report_split"]
    sweep = _sweep(cfg, spec, sets)
    metrics["probe"] = _probe_metrics(sweep, sets, spec, split)
    model = Classifier(backbone, sweep.linear_head())
    card = ModelCard(metrics["task"], spec.classes, prep, backbone_source(backbone, cfg.seed), head=_head_record(sweep),
                     license=backbone.info.license, metrics=metrics["probe"]["summary"])  # fmt: skip
    if spec.multilabel and "val" in sets:  # the decision threshold predict uses, chosen on validation
        val_probs = model.head.predict_proba(_inputs(sets["val"], sweep))
        card.inference["threshold"] = metrics["probe"]["threshold"] = best_threshold(val_probs, sets["val"].labels)
    save_model(stage, model, card)
    _write_sweep_table(stage / "sweep.csv", sweep)
    probs = model.head.predict_proba(_inputs(sets[split], sweep))
    write_predictions(stage / "predictions.csv", paths[split], sets[split].labels, probs, spec.classes, spec.multilabel)
    head_params = sum(p.numel() for p in model.head.parameters())
    metrics["parameters"] = {"trainable": head_params, "total": sum(p.numel() for p in model.parameters())}


def _head_record(sweep: SweepResult) -> dict[str, Any]:
    """What the card says about how the head was found: method, its setting, selection rule, refit."""
    best = sweep.best
    setting = {"C": best.c} if best.method == "lbfgs" else {"lr": best.lr, "weight_decay": best.weight_decay}
    return {"method": best.method, **setting, "selection": sweep.extras["selection"], "refit": sweep.extras["refit"]}


def _sweep(cfg: ProbeConfig, spec: DatasetSpec, sets: dict[str, FeatureSet]) -> SweepResult:
    class_weights = None
    if cfg.data.class_weights:
        from dinotune.data.datasets import class_weights as weights_for

        class_weights = weights_for([s.label for s in spec.splits["train"]], spec.num_classes)
    unused = unused_sgd_settings(cfg.sweep)
    if unused:  # the user tuned the SGD grid, which the default methods do not train
        log.warning("sweep.%s: used by the SGD grid only, which sweep.methods leaves out; add it: "
                    "sweep.methods=[lbfgs,sgd]", ", sweep.".join(unused))  # fmt: skip
    return sweep_linear_heads(
        sets["train"],
        sets["val"],
        sets.get("test"),
        lrs=cfg.sweep.lrs,
        weight_decays=cfg.sweep.weight_decays,
        feature_choices=cfg.sweep.feature_choices,
        epochs=cfg.sweep.epochs,
        batch_size=cfg.sweep.batch_size,
        patience=cfg.sweep.patience,
        multilabel=spec.multilabel,
        num_classes=spec.num_classes,
        class_weights=class_weights,
        label_smoothing=cfg.sweep.label_smoothing,
        methods=cfg.sweep.methods,
        cs=cfg.sweep.cs,
        selection=cfg.sweep.selection,
        refit=cfg.sweep.refit,
        class_names=spec.classes,
        seed=cfg.seed,
        device=None if cfg.device == "auto" else cfg.device,
        progress=cfg.progress,
    )


def _inputs(split: FeatureSet, sweep: SweepResult) -> torch.Tensor:
    from dinotune.heads.linear import build_input

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
    return {
        "best_head": sweep.best.as_dict(),
        "selection": sweep.extras["selection"],
        "refit": sweep.extras["refit"],
        "heads_trained": len(sweep.table),
        "epochs_run": sweep.epochs_run,
        "summary": {f"{split}/{key}": detail[key], "val/" + sweep.metric: sweep.best.val_score},
        split: detail,
    }


def _knn_metrics(cfg: ProbeConfig, sets: dict[str, FeatureSet], spec: DatasetSpec) -> dict[str, Any]:
    """k and the temperature chosen on validation (`select_knn` is given no test data), k capped by the
    train size; then the chosen temperature's accuracy (mAP) for every k on each split, for the record."""
    kind, bank = cfg.knn.feature, sets["train"]
    key = "map" if spec.multilabel else "accuracy"

    def score(probs: torch.Tensor, labels: torch.Tensor) -> float:
        return float(_evaluate(probs, labels, spec)[key])

    val = sets["val"]
    chosen = select_knn(bank.features[kind], bank.labels, val.features[kind], val.labels, score, ks=cfg.knn.ks,
                        temperatures=cfg.knn.temperatures, num_classes=spec.num_classes)  # fmt: skip
    ks = sorted({k for k, _ in chosen.val_scores})
    out: dict[str, Any] = {"feature": kind, "selected_on": "val", "k": chosen.k, "temperature": chosen.temperature}
    out["val_scores"] = {f"k={k},T={t:g}": v for (k, t), v in chosen.val_scores.items()}
    for split in ("val", "test"):
        if split in sets:
            result = knn_classify(bank.features[kind], bank.labels, sets[split].features[kind], ks=ks,
                                  temperature=chosen.temperature, num_classes=spec.num_classes)  # fmt: skip
            out[split] = {f"k={k}": score(result.probs[k], sets[split].labels) for k in ks}
    out["summary"] = {f"{split}/{key}": out[split][f"k={chosen.k}"] for split in ("val", "test") if split in out}
    return out


def summary_line(metrics: dict[str, Any]) -> str:
    parts = []
    if "probe" in metrics:
        parts.append("linear probe " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["probe"]["summary"].items()))
    if "knn" in metrics:
        knn = metrics["knn"]
        scores = ", ".join(f"{k} {v:.4f}" for k, v in knn["summary"].items())
        parts.append(f"kNN (k={knn['k']}, T={knn['temperature']:g}, chosen on val) {scores}")
    return "; ".join(parts)


def _write_sweep_table(path: Path, sweep: SweepResult) -> None:
    from dinotune.atomic import atomic_path

    rows = sweep.table_rows()
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def probe(data: str | Path, backbone: str | Backbone | None = None, **options: Any) -> Result:
    """Python API of `dinotune probe`: options are ProbeConfig fields, `data` may be a path or a dict."""
    from dinotune.config import validate

    values: dict[str, Any] = {"data": data if isinstance(data, dict) else {"root": data}, **options}
    if isinstance(backbone, str):
        values["backbone"] = {"source": backbone}
    loaded = None if backbone is None or isinstance(backbone, str) else backbone
    return run_probe(validate(ProbeConfig, values), backbone=loaded)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
