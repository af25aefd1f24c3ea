"""The `head.m2f:` section: sizes of the Mask2Former head, where its weights start, which parts train,
how its classes map to the user's, and the weights of its set-prediction loss.

The size defaults are the official DINOv3 ones (hard-coded there), so an official head file loads
with nothing but `weights:` set; smaller sizes are for small data and for tests.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from dinotune.config import StrictModel


class Mask2FormerLossConfig(StrictModel):
    """Hungarian-matched set loss (Mask2Former): class CE + mask BCE + mask Dice, on every decoder output."""

    class_weight: float = Field(2.0, ge=0, description="Weight of the class cross-entropy (and its matching cost).")
    mask_weight: float = Field(5.0, ge=0, description="Weight of the mask sigmoid BCE (and its matching cost).")
    dice_weight: float = Field(5.0, ge=0, description="Weight of the mask Dice loss (and its matching cost).")
    no_object_weight: float = Field(0.1, ge=0, description="CE weight of the 'no object' class.")
    points: int = Field(0, ge=0, description="Sampled pixels per mask for the mask losses (0: every pixel).")
    aux: bool = Field(True, description="Also supervise the predictions after every decoder layer.")


class Mask2FormerConfig(StrictModel):
    """Head and adapter sizes (official defaults), starting weights, trainable parts, class aggregation."""

    hidden_dim: int = Field(
        256, ge=32, multiple_of=32, description="Width of pixel decoder and queries (GroupNorm 32)."
    )
    num_queries: int = Field(100, ge=1, description="Learned queries (masks predicted per image).")
    enc_layers: int = Field(6, ge=1, description="Deformable encoder layers of the pixel decoder.")
    dec_layers: int = Field(9, ge=1, description="Masked-attention decoder layers.")
    ffn_dim: int = Field(4096, ge=1, description="FFN width of encoder and decoder layers.")
    heads: int = Field(16, ge=1, description="Attention heads of the pixel decoder and the decoder.")
    adapter_heads: int = Field(16, ge=1, description="Deformable attention heads of the adapter's extractors.")
    adapter_inplanes: int = Field(64, ge=1, description="Channels of the adapter's convolutional stem.")
    adapter_drop_path: float = Field(0.3, ge=0, lt=1, description="Stochastic depth of the adapter (training).")
    weights: Path | None = Field(
        None, description="Official head file (e.g. dinov3_vitl16_ade20k_m2f_head-*.pth) or full segmentor checkpoint."
    )
    head_classes: list[str] | Path | None = Field(
        None,
        description="Names of the head's own classes (e.g. the 150 ADE20K names), or a YAML/JSON file listing them; "
        "default: the user's classes.",
    )
    aggregate: Path | None = Field(
        None, description="YAML/JSON file: user class -> list of head classes whose probabilities are summed."
    )
    trainable: list[str] = Field(
        default_factory=lambda: [""],
        description="Head parameter name prefixes that train, e.g. [predictor.class_embed]; [''] = the whole head.",
    )
    loss: Mask2FormerLossConfig = Field(default_factory=Mask2FormerLossConfig)


__all__ = ["Mask2FormerConfig", "Mask2FormerLossConfig"]
