"""ONNX Runtime twins of `Classifier`, `Segmenter` and `Detector`, for export folders.

They take and return torch tensors with the call interface of the PyTorch models, so predict,
evaluate and serve run an export folder exactly as they run the run folder it came from. `run`
takes and returns numpy arrays and needs no torch: torch is imported only by the tensor methods,
so a slim server (numpy, PIL, onnxruntime) runs an export without it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dinotune.errors import CheckpointError, DataError
from dinotune.model.card import ModelCard, inside, verify_file
from dinotune.model.nms import postprocess, postprocess_config

if TYPE_CHECKING:
    from torch import Tensor

INPUT_NAME = "images"
log = logging.getLogger("dinotune")


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """A CPU inference session; idle threads do not spin (they would steal the CPU decoding needs).

    `threads` sizes the intra-op pool (None: ONNX Runtime's default, one per core of the node, which
    ignores a container's CPU limit: the server passes `dinotune.serve.threads.cpu_threads`)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("running an ONNX export needs onnxruntime: pip install 'dinotune[export]'.") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
        raise CheckpointError(f"{path} is not a loadable ONNX model ({str(err).splitlines()[0][:200]}).") from None


def check_input_size(card: ModelCard, height: int, width: int) -> None:
    """Refuse the sizes the PyTorch model refuses (the export tried one: `head.other_sizes`), and any
    other size for a fixed-size graph, instead of letting ONNX Runtime run them silently."""
    multiple, fixed = int(card.head.get("input_multiple", 16)), card.head.get("fixed_size")
    if card.head.get("other_sizes") == "refused" and (height % multiple or width % multiple):
        raise DataError(
            f"input size {height}x{width} is not a multiple of {multiple} (the patch size); resize as the "
            "card's input_spec says (multiples of the patch size)."
        )
    if fixed and (height, width) != (fixed, fixed):
        raise DataError(f"input size {height}x{width}: this export takes {fixed}x{fixed} only; resize to it.")


class _OnnxModel:
    """What both twins share: the session, the card's I/O names, torch-like no-ops."""

    def __init__(self, session: Any, card: ModelCard) -> None:
        self.session, self.card = session, card
        self.input_multiple = int(card.head.get("input_multiple", 16))
        self.outputs: list[str] = list(card.head.get("outputs", ["logits"]))

    @property
    def device(self) -> Any:
        import torch

        return torch.device("cpu")

    def run(self, images: Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """NCHW images (array or tensor) -> the graph's outputs by name, as numpy arrays."""
        array = images if isinstance(images, np.ndarray) else images.detach().float().cpu().numpy()
        check_input_size(self.card, array.shape[-2], array.shape[-1])
        values = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(array, dtype=np.float32)})
        return dict(zip(self.outputs, values, strict=True))

    def eval(self) -> _OnnxModel:
        return self

    def to(self, *_: Any, **__: Any) -> _OnnxModel:
        return self


class OnnxClassifier(_OnnxModel):
    """images -> logits, and the embedding the export carries (the normed class token)."""

    def __call__(self, images: Tensor) -> Tensor:
        import torch

        return torch.from_numpy(self.run(images)["logits"])

    def logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        import torch

        out = self.run(images)
        return torch.from_numpy(out["logits"]), torch.from_numpy(out["embedding"])

    def logits_and_embedding(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.logits_and_features(images)

    def predict_proba(self, images: Tensor) -> Tensor:
        import torch

        logits = self(images)
        return torch.sigmoid(logits) if self.card.multilabel else logits.softmax(dim=1)


class OnnxSegmenter(_OnnxModel):
    """images (any H/W) -> logits (B, K, H, W), padded and cropped exactly as `Segmenter` does; for a depth
    export the one output channel is depth in metres (as `DepthModel` gives)."""

    @property
    def num_classes(self) -> int:
        return len(self.card.classes)

    def __call__(self, images: Tensor) -> Tensor:
        import torch

        return torch.from_numpy(self.logits(images.detach().float().cpu().numpy()))

    def logits(self, images: np.ndarray) -> np.ndarray:
        """NCHW (any H/W) -> logits (N, K, H, W): zero-padded to the input multiple, the padding cropped off."""
        h, w = images.shape[-2:]
        pad_h, pad_w = (-h) % self.input_multiple, (-w) % self.input_multiple
        if pad_h or pad_w:
            images = np.pad(images, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)))
        return self.run(images)[self.outputs[0]][..., :h, :w]  # "logits", or "depth" for a depth export


class OnnxDetector(_OnnxModel):
    """Letterboxed images (N, C, S, S), S the card's fixed size -> detections per image, as `Detector` gives.

    The graph outputs decoded `boxes` (N, L, 4) and per-class `scores` (N, L, K) before NMS; `detect` runs
    the numpy post-processing of `dinotune.model.nms` (what `Detector.predict` runs), without torch."""

    def __init__(self, session: Any, card: ModelCard) -> None:
        super().__init__(session, card)
        self.postprocess_cfg = postprocess_config(card.inference)

    @property
    def num_classes(self) -> int:
        return len(self.card.classes)

    def detect(self, images: np.ndarray) -> list[dict[str, np.ndarray]]:
        """NCHW float32 -> per image {"boxes", "scores", "labels"} (numpy) in input pixels, after NMS."""
        out = self.run(images)
        return [postprocess(b, s, self.postprocess_cfg) for b, s in zip(out["boxes"], out["scores"], strict=True)]

    def predict(self, images: Tensor) -> list[dict[str, Tensor]]:
        """The `Detector.predict` interface: torch tensors in and out."""
        import torch

        return [
            {k: torch.from_numpy(v) for k, v in d.items()} for d in self.detect(images.detach().float().cpu().numpy())
        ]


def load_onnx_model(
    folder: Path, card: ModelCard, file: str | None = None, threads: int | None = None
) -> OnnxClassifier | OnnxSegmenter:
    """The twin for an export folder's card; `file` picks another graph of the folder (e.g. fp32)."""
    path = inside(folder, file or card.head["file"], "head.file")
    if not path.is_file():
        raise CheckpointError(f"'{folder}' has no {path.name}; export it again.")
    if card.task == "embed":
        raise CheckpointError(f"'{folder}' is a backbone-only export; predicting needs an export with its head.")
    if path.name != card.head.get("fp32_file", path.name):
        log.info("running %s (int8); the fp32 graph is %s", path.name, card.head["fp32_file"])
    verify_file(folder, card, path)
    session = onnx_session(path, threads)
    if card.task == "detect":
        return OnnxDetector(session, card)  # type: ignore[return-value]
    return OnnxSegmenter(session, card) if card.task in ("segment", "depth") else OnnxClassifier(session, card)
