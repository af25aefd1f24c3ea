"""One inference interface over every model folder the server can be given.

A classifier engine answers `run(batch) -> (probabilities, embeddings)` for the micro-batcher; a
segmentation engine answers `segment(image) -> class probabilities (K, H, W)` one image at a time
(images keep their own size); a detection engine answers `detect(image) -> boxes, scores, labels` in
the image's own pixels (letterboxed in numpy, the same NMS in both runtimes: `dinotune.model.nms`);
`preprocess(image)` turns a decoded image into the model's input.

An export folder (or `.onnx`) runs on `OnnxEngine`: numpy, PIL and ONNX Runtime only, preprocessing in
numpy (`dinotune.data.numpy_transforms`, equal to the training pipeline to 1e-5), so a slim image without
torch serves it. Run and model folders run on `TorchEngine` through `dinotune.model.load_model`, with the
training transform, so the server runs exactly what predict and evaluate run; torch is imported there only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.data.letterbox import LetterboxTransform
from dinotune.data.numpy_transforms import EvalTransform, FullSizeTransform
from dinotune.errors import CheckpointError
from dinotune.features.hashes import file_hash
from dinotune.model import slide
from dinotune.model.card import ModelCard, inside, read_card
from dinotune.model.nms import to_original
from dinotune.model.onnx import load_onnx_model

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


def model_name(card: ModelCard, folder: Path) -> str:
    """The card's `name`, else the run's folder name (an export folder `RUN/export` is named by its RUN)."""
    folder = folder.resolve()
    return card.name or (folder.parent.name if card.is_onnx and folder.name == "export" else folder.name)


def file_checksum(card: ModelCard, path: Path) -> str:
    """sha256 of the served weight file: the card's record (`files`, written by export) or computed here."""
    recorded = card.files.get(path.name, {}).get("sha256")
    return recorded if isinstance(recorded, str) and recorded else file_hash(path)


class Engine:
    """What every engine shares: the card, the folder's name and reference, the input transform."""

    runtime = "none"

    def __init__(self, card: ModelCard, folder: Path, input_multiple: int, weights: Path | None) -> None:
        self.card, self.input_multiple = card, input_multiple
        self.name = model_name(card, folder)
        self.reference = Reference.load(folder / "reference_stats.json")
        self.checksum = file_checksum(card, weights) if weights is not None and weights.is_file() else ""
        prep = card.preprocessing
        # a segmenter sees each image at its own size (sliding window), a classifier the card's input size
        if self.detects:  # the letterbox runs in `detect`, which needs the image's own size too
            self._transform = _as_float32
            self._letterbox = LetterboxTransform(prep.image_size, prep.mean, prep.std, prep.channels)
        else:
            self._transform = (
                FullSizeTransform(prep.mean, prep.std)
                if self.segments
                else EvalTransform.from_preprocessing(prep, input_multiple)
            )

    @property
    def segments(self) -> bool:
        """Whole images one at a time, at their own size: segmentation and depth."""
        return self.card.task in ("segment", "depth")

    @property
    def detects(self) -> bool:
        return self.card.task == "detect"

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Decoded HxWxC float32 -> {"boxes" (M, 4) xyxy in its own pixels, "scores", "labels"}."""
        array, scale = self._letterbox(image)
        return to_original(self._detect(array[None])[0], scale, image.shape[0], image.shape[1])

    def _detect(self, images: np.ndarray) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Decoded HxWxC float32 -> CHW float32 model input."""
        return self._transform(image)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float64)
        if self.card.multilabel:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def segment(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def depth_map(self, image: np.ndarray) -> np.ndarray:
        """CHW float32 (any size) -> (H, W) depth in metres, with the card's inference settings."""
        raise NotImplementedError


class OnnxEngine(Engine):
    """An export on ONNX Runtime, in numpy alone (no torch), segmentation's sliding windows included."""

    runtime = "onnxruntime"

    def __init__(self, folder: Path, card: ModelCard, file: str | None, threads: int | None) -> None:
        self.model = load_onnx_model(folder, card, file, threads)
        super().__init__(card, folder, self.model.input_multiple, inside(folder, file or card.head["file"], "file"))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """NCHW float32 -> (N x classes probabilities, N x D embeddings)."""
        out = self.model.run(images)
        return self.probabilities(out["logits"]), out["embedding"].astype(np.float32)

    def segment(self, image: np.ndarray) -> np.ndarray:
        """CHW float32 (any size) -> (K, H, W) class probabilities, with the card's inference settings."""
        cfg = slide.InferenceConfig(**self.card.inference)
        return slide.predict_probs(self.model.logits, image[None], len(self.card.classes), cfg)[0]

    def depth_map(self, image: np.ndarray) -> np.ndarray:
        cfg = slide.InferenceConfig(**self.card.inference)
        return slide.predict_depth_array(self.model.logits, image[None], cfg)[0, 0]

    def _detect(self, images: np.ndarray) -> list[dict[str, np.ndarray]]:
        return self.model.detect(images)


class TorchEngine(Engine):
    """A run or model folder in PyTorch, preprocessed by the training pipeline itself."""

    runtime = "torch"

    def __init__(self, folder: Path, threads: int | None) -> None:
        import torch

        from dinotune.model.io import HEAD_FILE, load_model

        if threads:
            torch.set_num_threads(threads)
        self.model, card = load_model(folder, device="cpu")
        if card.task == "embed":
            raise CheckpointError(f"{folder} is a backbone-only export (task 'embed'); serve needs one with a head.")
        super().__init__(card, folder, self.model.input_multiple, folder / card.head.get("file", HEAD_FILE))
        if not self.segments and not self.detects:  # exactly the tensors predict and evaluate compute
            self._transform = _TensorToArray(card.preprocessing.transform(self.input_multiple))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            logits, embedding = self.model.logits_and_embedding(torch.from_numpy(images))
        return self.probabilities(logits.double().numpy()), embedding.float().numpy()

    def segment(self, image: np.ndarray) -> np.ndarray:
        return _torch_segment(self.model, self.card, image)

    def depth_map(self, image: np.ndarray) -> np.ndarray:
        import torch

        from dinotune.model.depther import predict_depth

        with torch.inference_mode():
            cfg = slide.InferenceConfig(**self.card.inference)
            return predict_depth(self.model, torch.from_numpy(image)[None], cfg)[0, 0].numpy()

    def _detect(self, images: np.ndarray) -> list[dict[str, np.ndarray]]:
        import torch

        with torch.inference_mode():
            found = self.model.predict(torch.from_numpy(images))
        return [{k: v.numpy() for k, v in d.items()} for d in found]


def _as_float32(image: np.ndarray) -> np.ndarray:
    return (image[:, :, None] if image.ndim == 2 else image).astype(np.float32, copy=False)


class _TensorToArray:
    """A training transform's CHW tensor as the array the batcher stacks."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.transform(image)["image"].numpy()


def _torch_segment(model: Any, card: ModelCard, image: np.ndarray) -> np.ndarray:
    """CHW float32 (any size) -> (K, H, W) class probabilities, with the card's inference settings."""
    import torch

    from dinotune.model.inference import InferenceConfig, predict_probs

    cfg = InferenceConfig(**card.inference)
    with torch.inference_mode():
        probs = predict_probs(model, torch.from_numpy(image)[None], len(card.classes), cfg)
    return probs[0].numpy()


def load_engine(model: str | Path, threads: int | None = None) -> Engine:
    """A model/run folder, an export folder, or an exported `.onnx` file with its model.json beside it."""
    path = Path(model)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CheckpointError(f"'{path}' does not exist.")
        return OnnxEngine(path.parent, read_card(path.parent), path.name, threads)
    card = read_card(path)
    if card.is_onnx:
        return OnnxEngine(path, card, None, threads)
    return TorchEngine(path, threads)
