"""`dinotune train` with `task: depth`: monocular depth estimation on custom image + depth pairs.

`run_depth(cfg, resume=False)` writes one run folder: the best model by val/absrel (minimised) as a model
folder (`model.json` with task `depth`, its depth range, PNG scale and head), metrics.json at full
resolution (with each metric's direction), per_image_depth.csv, depth maps and previews of the report
split, report.html, and the logs and checkpoints of every training verb (`resume=True` continues exactly).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
from pydantic import Field
from torch.utils.data import DataLoader

from dinotune.data.depth import DepthDataConfig, depth_datasets
from dinotune.errors import ConfigError, DataError
from dinotune.evaluation.depth import depth_dataset, depth_summary, evaluate_depther
from dinotune.evaluation.depth_files import png_scale
from dinotune.evaluation.depth_report import write_depth_report
from dinotune.heads.depth import DepthHeadConfig
from dinotune.losses.depth import DepthLossConfig
from dinotune.metrics.depth import DIRECTIONS
from dinotune.model import ModelCard, load_model
from dinotune.model.depther import build_depth_model
from dinotune.model.slide import InferenceConfig
from dinotune.tasks.depth import DepthModule
from dinotune.training.modes import prepare_model
from dinotune.training.sampler import resumable_loader
from dinotune.verbs.common import Result, backbone_source, with_channels
from dinotune.verbs.training import (
    DenseTrainingConfig,
    fit_and_evaluate,
    training_run,
)


class DepthConfig(DenseTrainingConfig):
    task: Literal["depth"] = "depth"
    data: DepthDataConfig
    head: DepthHeadConfig = Field(default_factory=DepthHeadConfig)
    loss: DepthLossConfig = Field(default_factory=DepthLossConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    save_predictions: bool = Field(True, description="Write depth maps and previews of the report split.")
    out: Path | None = Field(None, description="Run folder (default: runs/depth-<time>).")


def run_depth(cfg: DepthConfig, resume: bool = False, callbacks: tuple[L.Callback, ...] = ()) -> Result:
    """Train a depth head (and optionally the backbone), keep the best, evaluate it at full size."""
    start = time.perf_counter()
    if cfg.data.resize == "keep":
        raise ConfigError("data.resize=keep gives crops of different sizes; depth batches need square crops.")
    with training_run(cfg, "depth", resume) as (run_dir, run, backbone, prep):
        data_cfg = with_channels(cfg.data, backbone)
        spec, sets = depth_datasets(data_cfg, prep.mean, prep.std, run_dir, backbone.info.in_chans)  # type: ignore[arg-type]
        if not sets.get("train") or not sets.get("val"):
            raise DataError(f"'{cfg.data.root}' needs train and val pairs (found splits: {sorted(sets)}).")
        model = build_depth_model(backbone, cfg.head, cfg.data.min_depth, cfg.data.max_depth)
        counts = prepare_model(model, cfg.mode, freeze_blocks=cfg.freeze_blocks, lora=cfg.lora)
        data = cfg.data
        module = DepthModule(model, min_depth=data.min_depth, max_depth=data.max_depth, mode=cfg.mode,
                             optim=cfg.optim, loss=cfg.loss, seed=cfg.trainer.seed)  # fmt: skip
        depth = {"min_depth": data.min_depth, "max_depth": data.max_depth, "depth_scale": data.depth_scale, "unit": "m"}
        card = _card_maker(cfg, backbone, prep, depth)
        loaders = _loaders(cfg, sets)
        run.info(
            f"depth/{cfg.mode} + {cfg.head.type} head (layers {model.layers}): {backbone.info.arch} "
            f"({backbone.info.source}), {data.min_depth}..{data.max_depth} m, {counts['trainable']:,} "
            f"of {counts['total']:,} parameters trainable" + (" - resuming" if resume else "")
        )
        return fit_and_evaluate(cfg, module, loaders, card, run_dir=run_dir, run=run, counts=counts, started=start,
                                resume=resume, save_backbone=cfg.mode != "linear", callbacks=callbacks,
                                evaluate=lambda: _evaluate_splits(cfg, run_dir, spec, depth),
                                report=partial(write_depth_report, run_dir, backbone=card().backbone))  # fmt: skip


def _card_maker(cfg: DepthConfig, backbone: Any, prep: Any, depth: dict[str, Any]) -> Callable[[], ModelCard]:
    """The card of every saved model: task depth, one output ("depth"), the range, PNG scale and head."""
    source = backbone_source(backbone, cfg.trainer.seed)

    def card() -> ModelCard:
        head = {"type": cfg.head.type, "config": cfg.head.model_dump(mode="json"), "depth": depth}
        return ModelCard("depth", ["depth"], prep, dict(source), head, inference=cfg.inference.model_dump(),
                         license=backbone.info.license)  # fmt: skip

    return card


def _loaders(cfg: DepthConfig, sets: dict[str, Any]) -> tuple[Any, DataLoader]:
    """The resumable training loader and the validation loader."""
    workers, train = cfg.data.num_workers, sets["train"]
    loader = resumable_loader(train, batch_size=cfg.batch_size, seed=cfg.trainer.seed, num_workers=workers,
                              drop_last=len(train) > cfg.batch_size)  # fmt: skip
    val = DataLoader(sets["val"], batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
                     num_workers=workers, persistent_workers=workers > 0)  # fmt: skip
    return loader, val


def _evaluate_splits(cfg: DepthConfig, run_dir: Path, spec: Any, depth: dict[str, Any]) -> dict[str, Any]:
    """The saved best model on val and test at full size; depth maps and previews of the report split."""
    model, card = load_model(run_dir)
    report = "test" if spec.splits.get("test") else "val"
    metrics: dict[str, Any] = {
        "task": "depth",
        "classes": ["depth"],
        "report_split": report,
        "mode": cfg.mode,
        "head": cfg.head.type,
        "inference": cfg.inference.model_dump(),
        "depth": depth,
        "directions": DIRECTIONS,
    }
    summary: dict[str, float] = {}
    for split in ("val", "test"):
        if not spec.splits.get(split):
            continue
        out = run_dir / "predictions" if split == report and cfg.save_predictions else None
        csv_path = run_dir / "per_image_depth.csv" if split == report else None
        result = evaluate_depther(
            model,
            depth_dataset(spec.splits[split], card, depth),
            cfg.inference,
            out,
            csv_path,
            scale=png_scale(depth["depth_scale"], depth["max_depth"]),
        )
        metrics[split] = result
        summary |= depth_summary(split, result)
    metrics["summary"] = summary
    return metrics
