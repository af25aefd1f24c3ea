"""Deployable models: backbone + head in plain PyTorch (or ONNX Runtime), and the one folder format."""

from dinotune.model.card import CARD_FILE, TASKS, ModelCard, read_card
from dinotune.model.classifier import Classifier
from dinotune.model.io import HEAD_FILE, load_card_backbone, load_model, model_device, plain_copy, save_model
from dinotune.model.onnx import OnnxClassifier, OnnxSegmenter, load_onnx_model, onnx_session
from dinotune.model.segmenter import Segmenter, build_segmenter, feature_dims

__all__ = [
    "CARD_FILE",
    "HEAD_FILE",
    "TASKS",
    "Classifier",
    "ModelCard",
    "OnnxClassifier",
    "OnnxSegmenter",
    "Segmenter",
    "build_segmenter",
    "feature_dims",
    "load_card_backbone",
    "load_model",
    "load_onnx_model",
    "model_device",
    "onnx_session",
    "plain_copy",
    "read_card",
    "save_model",
]
