"""Sliding-window inference in numpy (ONNX serving without torch) equals the torch version: windows,
overlaps, flips and scales, on a model whose output depends on the window it sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinotune.model import inference, slide

K, C = 4, 3
RNG = np.random.default_rng(0)
W, V = RNG.normal(size=(K, C)).astype(np.float32), RNG.normal(size=(K, C)).astype(np.float32)


def _numpy_model(x: np.ndarray) -> np.ndarray:
    local = np.einsum("kc,nchw->nkhw", W, x)
    context = np.einsum("kc,nc->nk", V, x.mean(axis=(2, 3)))[..., None, None]  # the whole window
    return local + context


def _torch_model(x: torch.Tensor) -> torch.Tensor:
    local = torch.einsum("kc,nchw->nkhw", torch.from_numpy(W), x)
    context = torch.einsum("kc,nc->nk", torch.from_numpy(V), x.mean(dim=(2, 3)))[..., None, None]
    return local + context


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "slide", "crop": 16, "stride": 10},
        {"mode": "slide", "crop": 64, "stride": 40},  # one window larger than the image
        {"mode": "whole"},
        {"mode": "slide", "crop": 16, "stride": 12, "flip": True, "scales": [0.75, 1.0, 1.3]},
        {"mode": "whole", "flip": True, "scales": [0.5, 1.5], "window_batch": 1},
    ],
)
def test_numpy_sliding_window_equals_torch(settings: dict) -> None:
    images = RNG.normal(size=(2, C, 37, 29)).astype(np.float32)
    cfg = slide.InferenceConfig(**settings)
    ours = slide.predict_probs(_numpy_model, images, K, cfg)
    reference = inference.predict_probs(_torch_model, torch.from_numpy(images), K, cfg).numpy()
    assert ours.shape == reference.shape == (2, K, 37, 29)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_the_torch_module_reexports_the_shared_pieces() -> None:
    assert inference.InferenceConfig is slide.InferenceConfig and inference.window_starts is slide.window_starts
    with pytest.raises(ValueError, match="stride"):
        slide.sliding_window(_numpy_model, np.zeros((1, C, 8, 8), np.float32), K, crop=4, stride=5)
