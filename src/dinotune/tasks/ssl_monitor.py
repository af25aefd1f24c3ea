"""Monitoring of continued pretraining.

`KnnMonitor` measures what users care about while the losses only say the optimisation runs: the
weighted kNN accuracy (k=20, T=0.07, `tasks.knn.knn_classify`) of the teacher's class-token features on
a small labelled ImageFolder, before training and after every `every_n_epochs` epochs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from dinotune.backbones import Backbone
from dinotune.config import StrictModel
from dinotune.data.decode import read_image
from dinotune.data.formats import DatasetSpec, load_dataset
from dinotune.data.transforms import build_transform
from dinotune.device import autocast
from dinotune.errors import DataError
from dinotune.tasks.knn import knn_classify

log = logging.getLogger(__name__)


class MonitorConfig(StrictModel):
    val_root: Path | None = Field(None, description="Labelled ImageFolder for the teacher kNN monitor (optional).")
    k: int = Field(20, ge=1)
    temperature: float = Field(0.07, gt=0)
    every_n_epochs: int = Field(1, ge=1)
    image_size: int | None = Field(None, gt=0, description="Eval resolution (None: crops.global_size).")
    batch_size: int = Field(64, ge=1)


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform: Any, channels: int) -> None:
        self.paths, self.transform, self.channels = list(paths), transform, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(read_image(self.paths[index], self.channels))["image"]


@torch.no_grad()
def class_token_features(
    backbone: Backbone,
    paths: Sequence[Path],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """Normed class tokens (N, D) of images resized to `image_size` (shorter side + centre crop)."""
    transform = build_transform(
        train=False,
        image_size=image_size,
        patch_size=backbone.input_multiple,
        resize="crop",
        augment="none",
        mean=mean,
        std=std,
        channels=channels,
    )
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out = []
    for images in DataLoader(_Images(paths, transform, channels), batch_size=batch_size):
        with autocast(device):
            out.append(backbone.forward_features(images.to(device))["x_norm_clstoken"].float().cpu())
    backbone.train(was_training)
    return torch.cat(out)


def knn_splits(spec: DatasetSpec) -> tuple[str, str]:
    """(bank split, query split): train vs val, else train vs test."""
    if "train" in spec.splits:
        for query in ("val", "test"):
            if spec.splits.get(query):
                return "train", query
    raise DataError(f"kNN monitor data needs a train split and a val or test split; found {sorted(spec.splits)}.")


def knn_accuracy(
    backbone: Backbone,
    spec: DatasetSpec,
    bank: str,
    query: str,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 64,
) -> float:
    """Top-1 accuracy of weighted kNN (train-split bank, query split) on the backbone's class tokens."""
    feats = {}
    for split in (bank, query):
        paths = [s.path for s in spec.splits[split]]
        feats[split] = class_token_features(backbone, paths, image_size, mean, std, channels, batch_size)
    bank_labels = torch.tensor([int(s.label) for s in spec.splits[bank]])
    query_labels = torch.tensor([int(s.label) for s in spec.splits[query]])
    result = knn_classify(
        feats[bank], bank_labels, feats[query], ks=(k,), temperature=temperature, num_classes=len(spec.classes)
    )
    return float((result.predictions[k] == query_labels).float().mean())


class KnnMonitor(L.Callback):
    """Logs `monitor/knn_top1` of the teacher at the start and every `every_n_epochs` epochs."""

    def __init__(
        self, cfg: MonitorConfig, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int
    ) -> None:
        if cfg.val_root is None:
            raise ValueError("KnnMonitor needs monitor.val_root")
        self.cfg, self.image_size, self.mean, self.std, self.channels = cfg, image_size, mean, std, channels
        self.spec = load_dataset(cfg.val_root, task="classify")
        self.bank, self.query = knn_splits(self.spec)
        self.history: list[dict[str, float]] = []

    def _measure(self, trainer: L.Trainer, pl_module: Any) -> None:
        accuracy = knn_accuracy(
            pl_module.exported_backbone(),
            self.spec,
            self.bank,
            self.query,
            self.image_size,
            self.mean,
            self.std,
            self.channels,
            self.cfg.k,
            self.cfg.temperature,
            self.cfg.batch_size,
        )
        self.history.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "knn_top1": accuracy})
        for logger in trainer.loggers:
            logger.log_metrics({"monitor/knn_top1": accuracy}, step=trainer.global_step)
        log.info("teacher kNN top-1 at step %d: %.4f", trainer.global_step, accuracy)

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.global_step == 0:
            self._measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if (trainer.current_epoch + 1) % self.cfg.every_n_epochs == 0:
            self._measure(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
