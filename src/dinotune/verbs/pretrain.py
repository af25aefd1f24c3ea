"""`dinotune pretrain`: self-supervised continued pretraining of a DINOv3 backbone on unlabelled images.

`run_pretrain(cfg, resume=False)` writes one run folder (`cfg.out`; `dinotune train CONFIG` runs it too,
the config's `task: pretrain` says so):

    config.yaml           the fully resolved config
    logs/version_N/       CSV metrics (loss/dino, loss/ibot, loss/koleo, loss/gram, monitor/..., schedule/...)
    checkpoints/          last.ckpt (+ periodic): student, EMA teacher, centres, optimizer, loop state
    backbone_hf/          the continued backbone (the EMA teacher) as a Hugging Face folder
    backbone.pth          the same weights in the official DINOv3 layout
    metrics.json          steps, minutes, kNN monitor history

Both exports load with `load_backbone`. `resume=True` (`--resume`) continues from `last.ckpt`; an existing
run folder is never trained over without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from pydantic import Field

from dinotune.atomic import atomic_dir, atomic_path
from dinotune.backbones import Backbone, load_backbone
from dinotune.config import BackboneConfig, StrictModel, save_resolved
from dinotune.data.formats import list_images
from dinotune.data.multicrop import MultiCrop, MultiCropConfig, MultiCropDataset
from dinotune.device import default_workers
from dinotune.errors import ConfigError, DataError
from dinotune.run_folder import training_output, write_json
from dinotune.tasks.ssl import HeadsConfig, SSLLossConfig, SSLModule, SSLOptimConfig, check_backbone
from dinotune.tasks.ssl_monitor import KnnMonitor, MonitorConfig
from dinotune.training.sampler import EpochSampler, ResumableLoader
from dinotune.training.trainer import TrainerConfig, build_trainer, resume_path
from dinotune.verbs.common import Result, resolve_channels

log = logging.getLogger(__name__)


class PretrainDataConfig(StrictModel):
    root: Path = Field(description="Folder of images (any layout, searched recursively; labels unused).")
    subfolders: list[str] | None = Field(
        None, description="Only use these subfolders of root (e.g. [train] to keep val/test images out)."
    )
    channels: int | None = Field(
        None, ge=1, le=64, description="Channels images are decoded to (default: the backbone's in_chans, else 3)."
    )
    mean: list[float] | None = Field(None, description="Normalisation mean per channel (None: the backbone's).")
    std: list[float] | None = Field(None, description="Normalisation std per channel (None: the backbone's).")
    batch_size: int = Field(64, ge=2, description="Images per device per step (each gives 2 + n_local crops).")
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers (None: cores - 1, at most 8).")
    on_bad_file: str = Field("skip", pattern="^(skip|error)$")


class PretrainConfig(StrictModel):
    task: Literal["pretrain"] = "pretrain"
    data: PretrainDataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    crops: MultiCropConfig = Field(default_factory=MultiCropConfig)
    heads: HeadsConfig = Field(default_factory=HeadsConfig)
    loss: SSLLossConfig = Field(default_factory=SSLLossConfig)
    optim: SSLOptimConfig = Field(default_factory=SSLOptimConfig)
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(max_epochs=100))
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    out: Path = Field(Path("runs/pretrain"), description="Run folder (--resume continues the run in it).")


def _image_paths(cfg: PretrainDataConfig) -> list[Path]:
    if not cfg.root.is_dir():
        raise DataError(f"data.root '{cfg.root}' is not a folder of images.")
    folders = [cfg.root / sub for sub in cfg.subfolders] if cfg.subfolders else [cfg.root]
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"data.subfolders: '{folder}' does not exist.")
    paths = [p for folder in folders for p in list_images(folder)]
    if not paths:
        raise DataError(f"No images found under {', '.join(map(str, folders))}.")
    return paths


def build_loader(cfg: PretrainConfig, backbone: Backbone) -> ResumableLoader:
    """Multi-crop DataLoader over `cfg.data` with the epoch-aware, resumable sampler."""
    cfg.crops.check_patch(backbone.input_multiple)
    paths = _image_paths(cfg.data)
    if len(paths) < cfg.data.batch_size:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} is larger than the {len(paths)} images under "
            f"'{cfg.data.root}'; lower it (every step needs a full batch)."
        )
    mean = cfg.data.mean or list(backbone.info.mean)
    std = cfg.data.std or list(backbone.info.std)
    if len(mean) != cfg.data.channels or len(std) != cfg.data.channels:
        raise ConfigError(f"data.mean/std need {cfg.data.channels} values (one per channel).")
    crops = MultiCrop(cfg.crops, cfg.data.channels, mean, std)
    dataset = MultiCropDataset(
        paths,
        crops,
        backbone.input_multiple,
        seed=cfg.trainer.seed,
        mask_ratio=cfg.loss.mask_ratio,
        mask_probability=cfg.loss.mask_probability,
        channels=cfg.data.channels,
        on_bad_file=cfg.data.on_bad_file,
    )
    sampler = EpochSampler(len(dataset), seed=cfg.trainer.seed)
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    return ResumableLoader(
        dataset,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def export_backbone(backbone: Backbone, run_dir: Path) -> tuple[Path, Path]:
    """Write `backbone_hf/` (save_pretrained) and `backbone.pth` (official keys), both atomically."""
    with atomic_dir(run_dir / "backbone_hf", overwrite=True) as tmp:
        backbone.save_pretrained(tmp)
    with atomic_path(run_dir / "backbone.pth") as tmp:
        torch.save(backbone.official_state_dict(), tmp)
    return run_dir / "backbone_hf", run_dir / "backbone.pth"


def run_pretrain(cfg: PretrainConfig, resume: bool = False, callbacks: Iterable[L.Callback] = ()) -> Result:
    """Train, then export the EMA teacher's backbone. `callbacks` are extra Lightning callbacks (tests use
    one to interrupt a run)."""
    run_dir = Path(cfg.out)
    with training_output(run_dir, resume=resume, has_checkpoint=resume_path(run_dir) is not None):
        save_resolved(cfg, run_dir)
        start = time.perf_counter()
        L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # the fresh heads' initialisation
        channels = resolve_channels(cfg.data, cfg.backbone)
        backbone = load_backbone(
            cfg.backbone.source, arch=cfg.backbone.arch, in_chans=channels, device="cpu", seed=cfg.trainer.seed
        )
        check_backbone(backbone, cfg.loss)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"channels": channels})})
        loader = build_loader(cfg, backbone)
        module = SSLModule(backbone, cfg.heads, cfg.loss, cfg.optim)
        extra: list[L.Callback] = list(callbacks)
        monitor = None
        if cfg.monitor.val_root is not None:
            mean, std = loader.dataset.crops.mean.tolist(), loader.dataset.crops.std.tolist()
            monitor = KnnMonitor(cfg.monitor, cfg.monitor.image_size or cfg.crops.global_size, mean, std, channels)
            extra.append(monitor)
        trainer = build_trainer(cfg.trainer, run_dir, extra, fsdp_wrap=_fsdp_units(backbone))
        trainer.fit(module, train_dataloaders=loader, ckpt_path=resume_path(run_dir) if resume else None)
        summary: dict[str, Any] = {}
        if trainer.is_global_zero:
            export_backbone(module.exported_backbone(), run_dir)
            summary = {
                "task": "pretrain",
                "steps": trainer.global_step,
                "epochs": trainer.current_epoch,
                "train_seconds": round(time.perf_counter() - start, 2),
                "resumed": resume,
                "exported": "EMA teacher backbone",
                "knn": monitor.history if monitor else [],
                "last_metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
            }
            write_json(run_dir / "metrics.json", summary)
    return Result(run_dir, summary)


def _fsdp_units(backbone: Backbone) -> set[type[torch.nn.Module]]:
    """FSDP units: blocks, embeddings, final norm and heads each shard separately, so student and teacher
    parameters line up one-to-one for the EMA update."""
    from torch import nn

    from dinotune.heads.ssl import DINOHead

    units: set[type[nn.Module]] = {DINOHead, nn.LayerNorm, *backbone.fsdp_units()}
    if backbone.embeddings is not None:
        units.add(type(backbone.embeddings))
    return units
