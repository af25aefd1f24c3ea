"""One inference interface over every model folder the server can be given.

A classifier engine answers `run(batch) -> (probabilities, embeddings)` for the micro-batcher; a
segmentation engine answers `segment(image) -> class probabilities (K, H, W)` one image at a time
(images keep their own size). Run, model and export folders load through `dinotune.model.load_model`,
so the server runs exactly what predict and evaluate run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinotune.errors import CheckpointError
from dinotune.model import ModelCard, load_model, load_onnx_model, read_card
from dinotune.model.inference import InferenceConfig, predict_probs

log = logging.getLogger(__name__)


@dataclass
class Reference:
    """Embedding statistics of known-good images, saved at export (`reference_stats.json`)."""

    mean: np.ndarray
    std: np.ndarray
    n: int

    @classmethod
    def load(cls, path: Path) -> Reference | None:
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(np.asarray(data["mean"], np.float64), np.asarray(data["std"], np.float64), int(data["n"]))


class Engine:
    """A loaded model and its card, named by its folder."""

    def __init__(self, model: Any, card: ModelCard, folder: Path, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model, self.card = model, card
        self.name = folder.resolve().name
        self.runtime = "onnxruntime" if card.is_onnx else "torch"
        self.input_multiple: int = model.input_multiple
        self.reference = Reference.load(folder / "reference_stats.json")

    @property
    def segments(self) -> bool:
        return self.card.task == "segment"

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """NCHW float32 -> (N x classes probabilities, N x D embeddings)."""
        with torch.inference_mode():
            logits, embedding = self.model.logits_and_embedding(torch.from_numpy(images))
        logits = logits.double()
        probs = torch.sigmoid(logits) if self.card.multilabel else logits.softmax(dim=1)
        return probs.numpy(), embedding.float().numpy()

    def segment(self, image: np.ndarray) -> np.ndarray:
        """CHW float32 (any size) -> (K, H, W) class probabilities, with the card's inference settings."""
        cfg = InferenceConfig(**self.card.inference)
        with torch.inference_mode():
            probs = predict_probs(self.model, torch.from_numpy(image)[None], len(self.card.classes), cfg)
        return probs[0].numpy()


def load_engine(model: str | Path, threads: int | None = None) -> Engine:
    """A model/run folder, an export folder, or an exported `.onnx` file with its model.json beside it."""
    path = Path(model)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CheckpointError(f"'{path}' does not exist.")
        card = read_card(path.parent)
        return Engine(load_onnx_model(path.parent, card, path.name, threads), card, path.parent, threads)
    net, card = load_model(path, device="cpu")
    if card.task == "embed":
        raise CheckpointError(f"{path} is a backbone-only export (task 'embed'); serve needs a model with a head.")
    return Engine(net, card, path, threads)
