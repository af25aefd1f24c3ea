"""DINOv3 backbones: architectures as data, loading from every source, checkpoint conversion."""

from dinotune.backbones.convnext import ConvNeXtBackbone
from dinotune.backbones.info import BackboneInfo
from dinotune.backbones.load import Backbone, load_backbone
from dinotune.backbones.specs import ARCHS, ArchSpec, get_arch
from dinotune.backbones.vit import ViTBackbone

__all__ = [
    "ARCHS",
    "ArchSpec",
    "Backbone",
    "BackboneInfo",
    "ConvNeXtBackbone",
    "ViTBackbone",
    "get_arch",
    "load_backbone",
]
