"""The deployable model: saved and loaded exactly, and equal to the head applied to cached features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinotune import load_backbone
from dinotune.data.preprocessing import Preprocessing
from dinotune.errors import CheckpointError
from dinotune.features.cache import FeatureCache
from dinotune.heads.linear import LinearHead, build_input
from dinotune.model import Classifier, ModelCard, load_model, read_card, save_model


def _classifier(arch: str = "vit_tiny16", choice: str = "last4_cls+patch_mean") -> Classifier:
    backbone = load_backbone(f"random:{arch}", device="cpu")
    torch.manual_seed(0)
    widths = {"cls": 1, "cls+patch_mean": 2, "last4_cls+patch_mean": 5}
    dim = widths[choice] * backbone.embed_dim
    head = LinearHead(
        torch.randn(3, dim), torch.randn(3), torch.randn(dim), torch.rand(dim) + 0.5, feature_choice=choice
    )
    return Classifier(backbone, head)


def _card(model: Classifier) -> ModelCard:
    info = model.backbone.info
    return ModelCard(
        task="classify",
        classes=["a", "b", "c"],
        preprocessing=Preprocessing(image_size=32, mean=info.mean, std=info.std),
        backbone={"source": info.source, "in_chans": 3, "seed": 0, "identity": info.identity},
        head={},
        license=info.license,
    )


@pytest.mark.parametrize(("arch", "choice"), [("vit_tiny16", "last4_cls+patch_mean"), ("convnext_test", "cls")])
def test_save_load_round_trip(tmp_path: Path, arch: str, choice: str) -> None:
    model = _classifier(arch, choice).eval()
    save_model(tmp_path / "m", model, _card(model))
    loaded, card = load_model(tmp_path / "m", device="cpu")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert card.classes == ["a", "b", "c"] and card.head["feature_choice"] == choice
    assert json.loads((tmp_path / "m" / "model.json").read_text())["format"] == "dinotune-model/1"


def test_changed_backbone_weights_are_saved_with_the_model(tmp_path: Path) -> None:
    model = _classifier("vit_test16", "cls").eval()
    with torch.no_grad():
        model.backbone.hf.norm.weight.mul_(2)  # as fine-tuning would
    save_model(tmp_path / "m", model, _card(model), save_backbone=True)
    loaded, _ = load_model(tmp_path / "m", device="cpu")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_model_on_images_equals_head_on_cached_features(tmp_path: Path) -> None:
    model = _classifier().eval()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(paths[-1])
    info = model.backbone.info
    prep = Preprocessing(image_size=32, mean=info.mean, std=info.std)
    cached = FeatureCache(tmp_path / "cache", model.backbone, prep).get(paths, progress=False).features
    with torch.no_grad():
        from_cache = model.head(build_input(cached, model.head.feature_choice))
        images = torch.stack([prep.load(p, 16) for p in paths])
        torch.testing.assert_close(model(images), from_cache, atol=1e-4, rtol=1e-4)


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no model\.json"):
        read_card(tmp_path)
    (tmp_path / "model.json").write_text('{"task": "classify"}')
    with pytest.raises(CheckpointError, match="not a dinotune model card"):
        read_card(tmp_path)


def _saved(tmp_path: Path) -> Path:
    model = _classifier("vit_test16", "cls")
    return save_model(tmp_path / "m", model, _card(model))


def _edit_card(folder: Path, **changes) -> None:
    card = json.loads((folder / "model.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            card[section][field] = value
        else:
            card[section] = value
    (folder / "model.json").write_text(json.dumps(card))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"head__file": "/etc/passwd"}, "points outside the model folder"),
        ({"head__file": "../other_run/head.safetensors"}, "points outside the model folder"),
        ({"backbone__weights_dir": "/etc"}, "points outside the model folder"),
        ({"classes": ["a", "b"]}, "has 3 outputs but the card lists 2 classes"),
        ({"task": "multilabel"}, "single-label head but the card's task is 'multilabel'"),
        ({"preprocessing__image_size": 20000}, "image_size=20000 is outside"),
    ],
)
def test_crafted_or_broken_model_folders_are_refused_at_load(tmp_path: Path, changes: dict, message: str) -> None:
    folder = _saved(tmp_path)
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "head.safetensors").write_bytes((folder / "head.safetensors").read_bytes())  # a valid foreign head
    _edit_card(folder, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_model(folder)


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    outside = tmp_path / "outside.safetensors"
    (folder / "head.safetensors").rename(outside)
    (folder / "head.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="points outside the model folder"):
        load_model(folder)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_heads_are_refused_so_ready_never_lies(tmp_path: Path, poison: float) -> None:
    from safetensors.torch import load_file, save_file

    from dinotune.serve.runtime import load_engine

    folder = _saved(tmp_path)
    tensors = load_file(str(folder / "head.safetensors"))
    tensors["linear.weight"][0, 0] = poison
    save_file(tensors, str(folder / "head.safetensors"), metadata={"feature_choice": "cls", "multilabel": "false"})
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(folder)
    with pytest.raises(CheckpointError, match="NaN or infinite"):  # the server's loader: /ready stays 503
        load_engine(folder)
