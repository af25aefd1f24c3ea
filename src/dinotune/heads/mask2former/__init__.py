"""Mask2Former-style segmentation in the official DINOv3 layout (adapter + pixel decoder + decoder), pure PyTorch."""

from dinotune.heads.mask2former.config import Mask2FormerConfig, Mask2FormerLossConfig
from dinotune.heads.mask2former.head import Mask2FormerHead, four_even_intervals
from dinotune.heads.mask2former.official import (
    head_class_count,
    load_head_strict,
    read_official,
    split_official,
    to_official,
)

__all__ = [
    "Mask2FormerConfig",
    "Mask2FormerHead",
    "Mask2FormerLossConfig",
    "four_even_intervals",
    "head_class_count",
    "load_head_strict",
    "read_official",
    "split_official",
    "to_official",
]
