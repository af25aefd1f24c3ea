"""One inference interface over a PyTorch model folder and an ONNX export.

The server only sees `Engine.run(batch) -> (probabilities, embeddings)`, so micro-batching, monitoring
and the HTTP layer are the same whichever runtime holds the weights.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dinotune.errors import CheckpointError
from dinotune.model import ModelCard, read_card

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


class Engine(Protocol):
    card: ModelCard
    name: str
    runtime: str
    input_multiple: int
    reference: Reference | None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """NCHW float32 -> (N x classes probabilities, N x D embeddings)."""
        ...


def _probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    logits = logits.astype(np.float64)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class TorchEngine:
    """A model folder (run folder) in PyTorch eager mode."""

    runtime = "torch"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import torch

        from dinotune.model import load_model

        if threads:
            torch.set_num_threads(threads)
        self.model, self.card = load_model(folder, device="cpu")
        self.name = folder.resolve().name
        self.input_multiple = self.model.backbone.input_multiple
        self.reference = Reference.load(folder / "reference_stats.json")
        self._kinds = tuple(dict.fromkeys(("cls", *self.model.kinds)))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from dinotune.features.extract import compute_features

        with torch.inference_mode():
            features = compute_features(self.model.backbone, torch.from_numpy(images), self._kinds)
            logits = self.model.forward_head(features)
        return _probabilities(logits.numpy(), self.card.multilabel), features["cls"].numpy()


class OnnxEngine:
    """An export folder (or its .onnx file) in ONNX Runtime."""

    runtime = "onnxruntime"

    def __init__(self, onnx_file: Path, card: ModelCard, threads: int | None = None) -> None:
        import onnxruntime as ort

        if card.task != "classify":
            raise CheckpointError(f"{onnx_file} is a backbone-only export (task '{card.task}'); serve needs a "
                                  "classifier: export without backbone_only.")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # idle ORT threads spin by default, stealing the CPU the event loop and image decoding need
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.card = card
        self.name = onnx_file.resolve().parent.name
        self.input_multiple = int(card.head.get("input_multiple", 16))
        self.reference = Reference.load(onnx_file.parent / "reference_stats.json")
        self._input = card.head.get("input", "images")
        outputs = card.head.get("outputs", ["logits", "embedding"])
        self._logits, self._embedding = outputs.index("logits"), outputs.index("embedding")

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.session.run(None, {self._input: images})
        return _probabilities(out[self._logits], self.card.multilabel), out[self._embedding]


def load_engine(model: str | Path, threads: int | None = None) -> Engine:
    """A model/run folder, an export folder, or an exported `.onnx` file with its model.json beside it."""
    path = Path(model)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CheckpointError(f"'{path}' does not exist.")
        card = read_card(path.parent)
        return OnnxEngine(path, card, threads)
    card = read_card(path)
    if card.head.get("type") == "onnx":
        return OnnxEngine(path / card.head["file"], card, threads)
    return TorchEngine(path, threads)
