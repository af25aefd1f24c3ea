"""`dinotune pretrain`: self-supervised continued pretraining of a DINOv3 backbone on unlabelled images.

`run_pretrain(cfg)` writes one run folder (`cfg.out`):

    config.yaml           the fully resolved config
    logs/version_N/       CSV metrics (loss/dino, loss/ibot, loss/koleo, loss/gram, monitor/..., schedule/...)
    checkpoints/          last.ckpt (+ periodic): student, EMA teacher, centres, optimizer, loop state
    backbone_hf/          the continued backbone (the EMA teacher) as a Hugging Face folder
    backbone.pth          the same weights in the official DINOv3 layout
    summary.json          steps, minutes, kNN monitor history

Both exports load with `load_backbone`. Re-running with the same `out` resumes from `last.ckpt`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from pydantic import Field

from dinotune.atomic import atomic_dir, atomic_path, write_text
from dinotune.backbones import Backbone, load_backbone
from dinotune.backbones.convert import hf_config_to_arch, hf_to_official
from dinotune.config import BackboneConfig, StrictModel, save_resolved
from dinotune.data.formats import list_images
from dinotune.data.multicrop import EpochSampler, MultiCrop, MultiCropConfig, MultiCropDataset, ResumableLoader
from dinotune.device import default_workers
from dinotune.errors import ConfigError, DataError
from dinotune.tasks.ssl import HeadsConfig, LossConfig, OptimConfig, SSLModule, check_backbone
from dinotune.tasks.ssl_monitor import KnnMonitor, MonitorConfig
from dinotune.training.trainer import TrainerConfig, build_trainer, resume_path

log = logging.getLogger(__name__)


class PretrainDataConfig(StrictModel):
    root: Path = Field(description="Folder of images (any layout, searched recursively; labels unused).")
    subfolders: list[str] | None = Field(
        None, description="Only use these subfolders of root (e.g. [train] to keep val/test images out).")
    channels: int = Field(3, ge=1, le=64, description="Channels images are decoded to (match backbone.in_chans).")
    mean: list[float] | None = Field(None, description="Normalisation mean per channel (None: the backbone's).")
    std: list[float] | None = Field(None, description="Normalisation std per channel (None: the backbone's).")
    batch_size: int = Field(64, ge=2, description="Images per device per step (each gives 2 + n_local crops).")
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers (None: cores - 1, at most 8).")
    on_bad_file: str = Field("skip", pattern="^(skip|error)$")


class PretrainConfig(StrictModel):
    data: PretrainDataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    crops: MultiCropConfig = Field(default_factory=MultiCropConfig)
    heads: HeadsConfig = Field(default_factory=HeadsConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(max_epochs=100))
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    out: Path = Field(Path("runs/pretrain"), description="Run folder (re-running with it resumes).")
    resume: bool = Field(True, description="Continue from out/checkpoints/last.ckpt when it exists.")


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
            f"'{cfg.data.root}'; lower it (every step needs a full batch).")
    mean = cfg.data.mean or list(backbone.info.mean)
    std = cfg.data.std or list(backbone.info.std)
    if len(mean) != cfg.data.channels or len(std) != cfg.data.channels:
        raise ConfigError(f"data.mean/std need {cfg.data.channels} values (one per channel).")
    crops = MultiCrop(cfg.crops, cfg.data.channels, mean, std)
    dataset = MultiCropDataset(paths, crops, backbone.input_multiple, seed=cfg.trainer.seed,
                               mask_ratio=cfg.loss.mask_ratio, mask_probability=cfg.loss.mask_probability,
                               channels=cfg.data.channels, on_bad_file=cfg.data.on_bad_file)
    sampler = EpochSampler(len(dataset), seed=cfg.trainer.seed)
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    return ResumableLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=workers,
                        drop_last=True, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def export_backbone(backbone: Backbone, run_dir: Path) -> tuple[Path, Path]:
    """Write `backbone_hf/` (save_pretrained) and `backbone.pth` (official keys), both atomically."""
    hf_model = backbone.hf
    with atomic_dir(run_dir / "backbone_hf", overwrite=True) as tmp:
        hf_model.save_pretrained(tmp)
    state = {k: v.detach().cpu().clone() for k, v in hf_model.state_dict().items()}
    official = hf_to_official(state, hf_config_to_arch(hf_model.config))
    with atomic_path(run_dir / "backbone.pth") as tmp:
        torch.save(official, tmp)
    return run_dir / "backbone_hf", run_dir / "backbone.pth"


def run_pretrain(cfg: PretrainConfig, callbacks: Iterable[L.Callback] = ()) -> Path:
    """Train, then export the EMA teacher's backbone; returns the run folder. `callbacks` are extra
    Lightning callbacks (tests use one to interrupt a run)."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run_dir)
    start = time.perf_counter()
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # the fresh heads' initialisation
    backbone = load_backbone(cfg.backbone.source, arch=cfg.backbone.arch, in_chans=cfg.backbone.in_chans,
                             device="cpu", seed=cfg.trainer.seed)
    if cfg.data.channels != backbone.info.in_chans:
        raise ConfigError(f"data.channels={cfg.data.channels} but the backbone takes {backbone.info.in_chans} "
                          "channels; set backbone.in_chans to match.")
    check_backbone(backbone, cfg.loss)
    loader = build_loader(cfg, backbone)
    module = SSLModule(backbone, cfg.heads, cfg.loss, cfg.optim)
    extra: list[L.Callback] = list(callbacks)
    monitor = None
    if cfg.monitor.val_root is not None:
        mean, std = loader.dataset.crops.mean.tolist(), loader.dataset.crops.std.tolist()
        monitor = KnnMonitor(cfg.monitor, cfg.monitor.image_size or cfg.crops.global_size, mean, std,
                             cfg.data.channels)
        extra.append(monitor)
    trainer = build_trainer(cfg.trainer, run_dir, extra, fsdp_wrap=_fsdp_units(backbone),
                            use_distributed_sampler=False)  # EpochSampler shards itself
    ckpt = resume_path(run_dir) if cfg.resume else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt)
    if trainer.is_global_zero:
        export_backbone(module.exported_backbone(), run_dir)
        summary = {"steps": trainer.global_step, "epochs": trainer.current_epoch,
                   "minutes_this_session": (time.perf_counter() - start) / 60, "resumed_from": str(ckpt or ""),
                   "exported": "EMA teacher backbone",
                   "knn": monitor.history if monitor else [],
                   "last_metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
        write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return run_dir


def _fsdp_units(backbone: Backbone) -> set[type[torch.nn.Module]]:
    """FSDP units: blocks, embeddings, final norm and heads each shard separately, so student and teacher
    parameters line up one-to-one for the EMA update."""
    from torch import nn

    from dinotune.heads_ssl import DINOHead

    units: set[type[nn.Module]] = {DINOHead, nn.LayerNorm}
    units.update(type(m) for m in backbone.hf.modules() if type(m).__name__.endswith(("Layer", "Embeddings")))
    return units
