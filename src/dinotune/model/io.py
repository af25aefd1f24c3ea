"""Save and load model folders: one format for every task, read by predict/evaluate/export/serve.

A model folder holds `model.json` (the card), `head.safetensors` and, when the backbone's weights
changed in training (fine-tuning, LoRA merged), a Hugging Face folder `backbone/`; otherwise the card
names the backbone source, so a frozen probe on a 7B backbone does not copy 27 GB into every run.
An export folder (`type: onnx` head) loads as the same kind of model, run by ONNX Runtime.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dinotune.atomic import atomic_dir, atomic_path, make_dirs, write_text
from dinotune.backbones import Backbone, load_backbone
from dinotune.device import resolve_device
from dinotune.errors import CheckpointError
from dinotune.heads.linear import LinearHead
from dinotune.heads.segment import HeadConfig, build_head
from dinotune.model.card import CARD_FILE, ModelCard, inside, read_card
from dinotune.model.classifier import Classifier
from dinotune.model.detector import Detector, detector_from_card
from dinotune.model.mask2former import build_mask_segmenter
from dinotune.model.onnx import load_onnx_model
from dinotune.model.segmenter import Segmenter, feature_dims

log = logging.getLogger(__name__)
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"
MAX_IMAGE_SIZE = 8192  # a card asking for more is broken or hostile: one image would not fit in memory
Model = Classifier | Segmenter | Detector


def save_model(folder: str | Path, model: Model, card: ModelCard, save_backbone: bool = False) -> Path:
    """Write model.json + head (+ backbone/ when its weights are not those of its source)."""
    folder = Path(folder)
    make_dirs(folder)
    with atomic_path(folder / HEAD_FILE) as tmp:
        if isinstance(model, (Segmenter, Detector)):
            save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(tmp))
            card.head = {**card.head, "file": HEAD_FILE, "layers": list(model.layers)}
        else:
            model.head.save(tmp)
            card.head = {**card.head, "type": "linear", "file": HEAD_FILE, "feature_choice": model.head.feature_choice}
    if save_backbone:
        with atomic_dir(folder / BACKBONE_DIR, overwrite=True) as tmp:
            model.backbone.save_pretrained(tmp)
        card.backbone["weights_dir"] = BACKBONE_DIR
    else:
        card.backbone.pop("weights_dir", None)
    write_text(folder / CARD_FILE, card.to_json())
    return folder


def plain_copy(model: Model) -> Model:
    """A CPU copy with LoRA merged and drop path off: what a model folder stores."""
    net = copy.deepcopy(model).cpu().eval()
    net.backbone.strip_training()
    return net


def load_card_backbone(folder: Path, spec: dict[str, Any]) -> Backbone:
    """The backbone a card names: saved weights beside it, or its source (warning if that changed since)."""
    weights_dir = spec.get("weights_dir")
    source = str(inside(folder, weights_dir, "backbone.weights_dir")) if weights_dir else spec["source"]
    backbone = load_backbone(source, in_chans=spec.get("in_chans", 3), device="cpu", seed=spec.get("seed", 0))
    if not weights_dir and spec.get("identity") and backbone.info.identity != spec["identity"]:
        log.warning(
            "backbone %s changed since this model was trained (identity %s, now %s)",
            source,
            spec["identity"],
            backbone.info.identity,
        )
    return backbone


def load_model(folder: str | Path, device: str | torch.device | None = None) -> tuple[Any, ModelCard]:
    """The model of a run, model or export folder, in eval mode, and its card.

    Run and model folders give a `Classifier` or `Segmenter`; an export folder gives its ONNX Runtime
    twin with the same call interface (`dinotune.model.onnx`).
    """
    folder = Path(folder)
    card = read_card(folder)
    _check_card(card, folder)
    if card.is_onnx:
        return load_onnx_model(folder, card), card
    if card.task == "embed":
        raise CheckpointError(f"'{folder}' holds a backbone only (task 'embed'); it has no head to predict with.")
    backbone = load_card_backbone(folder, card.backbone)
    head_path = inside(folder, card.head.get("file", HEAD_FILE), "head.file")
    if not head_path.is_file():
        raise CheckpointError(f"'{folder}' has {CARD_FILE} but no head file {head_path.name}.")
    if card.task == "segment":
        model: Model = _load_head(_segmenter(backbone, card), head_path)
    elif card.task == "depth":
        model = _load_head(_depth_model(backbone, card), head_path)
    elif card.task == "detect":
        model = _load_head(detector_from_card(backbone, card, head_path), head_path)
    else:
        model = Classifier(backbone, _linear_head(head_path))
    _check_head(model.head, card, head_path)
    return model.to(resolve_device(device)).eval(), card


def _linear_head(path: Path) -> LinearHead:
    try:
        return LinearHead.load(path)
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}).") from None


def _segmenter(backbone: Backbone, card: ModelCard) -> Segmenter:
    layers = card.head.get("layers")
    if not isinstance(layers, list):
        raise CheckpointError(f"{card.head.get('file')}: the card's head has no 'layers' list.")
    head_cfg = HeadConfig(**card.head.get("config", {}))
    if head_cfg.type == "m2f":
        model: Segmenter = _mask_segmenter(backbone, head_cfg, card)
    else:
        model = Segmenter(backbone, build_head(head_cfg, feature_dims(backbone, layers), len(card.classes)), layers)
    return model


def _load_head(model: Segmenter | Detector, path: Path) -> Segmenter | Detector:
    """`model` with its head's weights from `path` (a one-line error when they do not fit the card's head)."""
    try:
        model.head.load_state_dict(load_file(str(path)))
    except (RuntimeError, SafetensorError) as err:
        raise CheckpointError(f"{path} does not match the head in {CARD_FILE}: {str(err).splitlines()[0]}") from None
    return model


def _depth_model(backbone: Backbone, card: ModelCard) -> Segmenter:
    """A `DepthModel` from the card: head config, layers and depth range are stored there."""
    from dinotune.heads.depth import DepthHeadConfig, build_depth_head
    from dinotune.model.depther import DepthModel, grid_info

    layers, depth = card.head.get("layers"), card.head.get("depth", {})
    if not isinstance(layers, list) or "max_depth" not in depth:
        raise CheckpointError(f"{card.head.get('file')}: the card's depth head has no 'layers' list or depth range.")
    cfg = DepthHeadConfig(**card.head.get("config", {}))
    dims, same_grid = grid_info(backbone, layers)
    head = build_depth_head(cfg, dims, float(depth["min_depth"]), float(depth["max_depth"]), same_grid)
    return DepthModel(backbone, head, layers)


def _mask_segmenter(backbone: Backbone, head_cfg: HeadConfig, card: ModelCard) -> Segmenter:
    """A Mask2Former segmenter from the card alone: head classes and aggregation are stored there, and the
    official file named in the config is not read again (head.safetensors holds the trained weights)."""
    cfg = head_cfg.m2f.model_copy(update={"weights": None, "aggregate": None})
    head_classes = card.head.get("head_classes") or list(card.classes)
    return build_mask_segmenter(backbone, cfg, list(card.classes), list(head_classes), card.head.get("aggregate"))


def _check_card(card: ModelCard, folder: Path) -> None:
    size = card.preprocessing.image_size
    if not 0 < size <= MAX_IMAGE_SIZE:
        raise CheckpointError(f"{folder / CARD_FILE}: preprocessing.image_size={size} is outside 1..{MAX_IMAGE_SIZE}.")
    if card.task != "embed" and not card.classes:
        raise CheckpointError(f"{folder / CARD_FILE} lists no classes.")


def _check_head(head: nn.Module, card: ModelCard, path: Path) -> None:
    """Refuse heads that could only answer garbage: wrong class count or non-finite weights."""
    outputs = head.linear.out_features if isinstance(head, LinearHead) else head.num_classes
    if outputs != len(card.classes):
        raise CheckpointError(f"{path} has {outputs} outputs but the card lists {len(card.classes)} classes.")
    for name, tensor in head.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor '{name}' holds NaN or infinite values; retrain or re-export.")
    if isinstance(head, LinearHead) and head.multilabel != card.multilabel:
        raise CheckpointError(
            f"{path} is a {'multi-label' if head.multilabel else 'single-label'} head but the card's "
            f"task is '{card.task}'."
        )
    if isinstance(head, LinearHead) and not bool((head.std > 0).all()):
        raise CheckpointError(f"{path}: the standardisation std has zero or negative values.")


def model_device(model: Any) -> torch.device:
    """Where a model's inputs go: its parameters' device (the CPU for an ONNX Runtime twin)."""
    if hasattr(model, "parameters"):
        return next(model.parameters()).device
    return model.device
