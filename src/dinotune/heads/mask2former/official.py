"""Official DINOv3 Mask2Former state dicts <-> `Mask2FormerHead`.

The official segmentor is `FeatureDecoder(segmentation_model=ModuleList([DINOv3_Adapter, Mask2FormerHead]))`:
`segmentation_model.0.backbone.*` is the ViT (converted by `dinotune.backbones.convert`),
`segmentation_model.0.*` the adapter and `segmentation_model.1.*` the head. A released head file
(`dinov3_vit*16_ade20k_m2f_head-*.pth`) is the same dict without the backbone. Here the adapter lives
under `adapter.` and the head's `pixel_decoder` / `predictor` at the top: one rename of prefixes.
Loading is strict; every missing, unexpected or misshapen key is reported by its official name.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dinotune.errors import CheckpointError

PREFIX = "segmentation_model."
ADAPTER, HEAD, BACKBONE = "0.", "1.", "0.backbone."


def read_official(path: str | Path) -> dict[str, Tensor]:
    """A `.pth` state dict read without running pickled code (`weights_only=True`)."""
    try:
        sd = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a torn or foreign file
        raise CheckpointError(
            f"Cannot read '{path}': {type(err).__name__}: {str(err).splitlines()[0][:200]}."
        ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"'{path}' is not a state dict of tensors (an official Mask2Former head .pth).")
    return sd


def split_official(sd: dict[str, Tensor], source: str = "checkpoint") -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(backbone state dict in official ViT names, possibly empty; head state dict in dinotune names)."""
    backbone, head, unknown = {}, {}, []
    for key, value in sd.items():
        name = key.removeprefix(PREFIX)
        if name.startswith(BACKBONE):
            backbone[name.removeprefix(BACKBONE)] = value
        elif name.startswith(ADAPTER):
            head["adapter." + name.removeprefix(ADAPTER)] = value
        elif name.startswith(HEAD):
            head[name.removeprefix(HEAD)] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} keys are not part of an official Mask2Former segmentor "
            f"({_preview(unknown)}); expected 'segmentation_model.0.*' (adapter) and 'segmentation_model.1.*' (head)."
        )
    return backbone, head


def official_name(key: str) -> str:
    """A dinotune head key under its official name."""
    if key.startswith("adapter."):
        return PREFIX + ADAPTER + key.removeprefix("adapter.")
    return PREFIX + HEAD + key


def to_official(head_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The head's state dict in the layout of a released head file."""
    return {official_name(k): v for k, v in head_sd.items()}


def load_head_strict(head: torch.nn.Module, sd: dict[str, Tensor], source: str) -> None:
    """`head.load_state_dict(sd, strict=True)` with every problem listed by its official key name."""
    expected = head.state_dict()
    missing = [official_name(k) for k in expected if k not in sd]
    unexpected = [official_name(k) for k in sd if k not in expected]
    wrong = [
        f"{official_name(k)} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in sd.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{what} ({len(keys)}): {_preview(keys)}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{source} does not fit the Mask2Former head: {'; '.join(problems)}. Check head.m2f sizes "
            "(hidden_dim, num_queries, enc_layers, dec_layers, ffn_dim, adapter_inplanes) and the backbone."
        )
    head.load_state_dict(sd, strict=True)


def head_class_count(head_sd: dict[str, Tensor], source: str) -> int:
    """Classes of a head file (its class_embed has one more output: 'no object')."""
    weight = head_sd.get("predictor.class_embed.weight")
    if weight is None:
        raise CheckpointError(
            f"{source} has no {official_name('predictor.class_embed.weight')}: not a Mask2Former head."
        )
    return int(weight.shape[0]) - 1


def _preview(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


__all__ = ["head_class_count", "load_head_strict", "read_official", "split_official", "to_official"]
