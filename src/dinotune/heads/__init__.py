"""Every head: linear classification, segmentation (linear, decoder), SSL projection."""

from dinotune.heads.linear import LinearHead, build_input, new_linear_head, parse_feature_choice
from dinotune.heads.segment import HeadConfig, LinearSegHead, MultiScaleDecoder, build_head, layer_indices
from dinotune.heads.ssl import DINOHead

__all__ = [
    "DINOHead",
    "HeadConfig",
    "LinearHead",
    "LinearSegHead",
    "MultiScaleDecoder",
    "build_head",
    "build_input",
    "layer_indices",
    "new_linear_head",
    "parse_feature_choice",
]
