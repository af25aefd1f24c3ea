"""Depth inference over whole images: sliding windows and flips in torch and in numpy (the ONNX server's
path, no torch) agree, and windows covering the whole image equal one pass."""

from __future__ import annotations

import numpy as np
import torch

from dinotune import load_backbone
from dinotune.heads.depth import DepthHeadConfig
from dinotune.model.depther import build_depth_model, predict_depth
from dinotune.model.slide import InferenceConfig, predict_depth_array


def test_slide_and_flip_in_torch_and_numpy_agree() -> None:
    torch.manual_seed(0)
    model = build_depth_model(load_backbone("random:vit_test16", device="cpu"), DepthHeadConfig(bins=16), 0.5, 9.0)
    model = model.eval()
    x = torch.randn(1, 3, 48, 80)
    cfg = InferenceConfig(mode="slide", crop=32, stride=16, flip=True, scales=[1.0, 0.75])
    ours = predict_depth(model, x, cfg)
    with torch.no_grad():
        reference = predict_depth_array(lambda a: model(torch.from_numpy(a)).numpy(), x.numpy(), cfg)
    assert ours.shape == (1, 1, 48, 80) and np.abs(ours.numpy() - reference).max() < 1e-4
    assert float(ours.min()) >= 0.5 and float(ours.max()) <= 9.0
    whole = predict_depth(model, x, InferenceConfig(mode="whole"))
    one_window = predict_depth(model, x, InferenceConfig(mode="slide", crop=96, stride=64))
    assert torch.allclose(whole, one_window, atol=1e-6)
    assert not torch.allclose(whole, predict_depth(model, x, InferenceConfig(mode="slide", crop=32, stride=16)))
