"""The ONNX Runtime twin of `Detector`, for detection export folders.

The graph takes letterboxed images of the card's fixed size and outputs decoded `boxes` (N, L, 4)
xyxy in input pixels and per-class `scores` (N, L, K) before NMS; `detect` runs the numpy
post-processing of `dinotune.model.nms` (the one `Detector.predict` runs), without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dinotune.model.nms import postprocess, postprocess_config
from dinotune.model.onnx import _OnnxModel

if TYPE_CHECKING:
    from torch import Tensor


class OnnxDetector(_OnnxModel):
    """images (N, C, S, S), S the card's image size -> detections per image, as `Detector` gives them."""

    def __init__(self, session: Any, card: Any) -> None:
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
        """The `Detector.predict` interface: torch tensors in, torch tensors out."""
        import torch

        array = images.detach().float().cpu().numpy()
        return [{k: torch.from_numpy(v) for k, v in d.items()} for d in self.detect(array)]
