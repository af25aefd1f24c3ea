"""`predict_depth` of `dinotune.model.depther` in numpy alone (an ONNX export served without torch):
the same windows, flips and scales, depth averaged over them."""

from __future__ import annotations

import numpy as np

from dinotune.model.slide import ArrayModel, InferenceConfig, _resize_nchw, sliding_window


def predict_depth_array(model: ArrayModel, images: np.ndarray, cfg: InferenceConfig | None = None) -> np.ndarray:
    """Depth (B, 1, H, W) of NCHW float32 images with the card's inference settings."""
    cfg = cfg or InferenceConfig()
    h, w = images.shape[-2:]
    total = np.zeros((images.shape[0], 1, h, w), np.float32)
    views = 0
    for scale in cfg.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = images if scale == 1.0 else _resize_nchw(images, *size)
        for flip in (False, True) if cfg.flip else (False,):
            x = np.ascontiguousarray(scaled[..., ::-1]) if flip else scaled
            if cfg.mode == "whole":
                depth = model(x).astype(np.float32)
            else:
                depth = sliding_window(model, x, 1, cfg.crop, cfg.stride, cfg.window_batch)
            depth = depth[..., ::-1] if flip else depth
            if depth.shape[-2:] != (h, w):
                depth = _resize_nchw(np.ascontiguousarray(depth), h, w)
            total += depth
            views += 1
    return total / views
