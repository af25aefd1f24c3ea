"""The backbones compute the same features as Meta's code, from a .pth and after conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinotune import load_backbone
from dinotune.verbs.convert import convert_checkpoint
from tests.conftest import FIXTURE_NAMES

TOLERANCE = 1e-4


def _outputs(backbone, family: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every output the fixtures store, computed with the official API."""
    with torch.no_grad():
        features = backbone.forward_features(x)
        out = {k: features[k] for k in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens")}
        if family == "vit":
            layers = backbone.get_intermediate_layers(
                x, n=backbone.n_blocks, reshape=True, return_class_token=True, norm=True
            )
            for j, (patch, cls) in enumerate(layers):
                out[f"layer{j}.patch_normed_reshaped"] = patch
                out[f"layer{j}.cls_normed"] = cls
            ((patch, cls),) = backbone.get_intermediate_layers(x, n=1, return_class_token=True, norm=False)
            out["last_layer.patch_unnormed"] = patch
            out["last_layer.cls_unnormed"] = cls
        else:
            out["x_prenorm"] = features["x_prenorm"]
            stages = backbone.get_intermediate_layers(x, n=4, reshape=True, return_class_token=True, norm=True)
            for j, (patch, cls) in enumerate(stages):
                out[f"stage{j}.patch_normed_reshaped"] = patch
                out[f"stage{j}.cls_normed"] = cls
    return out


def _assert_matches(backbone, folder: Path) -> None:
    family = json.loads((folder / "arch.json").read_text())["family"]
    reference = load_file(str(folder / "reference_outputs.safetensors"))
    inputs = sorted(k for k in reference if "." not in k)
    assert len(inputs) == 2
    for name in inputs:
        ours = _outputs(backbone, family, reference[name])
        stored = {k.removeprefix(f"{name}."): v for k, v in reference.items() if k.startswith(f"{name}.")}
        assert set(stored) <= set(ours), f"outputs not computed: {set(stored) - set(ours)}"
        for key, expected in stored.items():
            assert ours[key].shape == expected.shape, key
            if expected.numel():
                diff = (ours[key] - expected).abs().max().item()
                assert diff < TOLERANCE, f"{folder.name} {name}.{key}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_official_pth_matches_reference(fixtures_dir: Path, name: str) -> None:
    folder = fixtures_dir / name
    backbone = load_backbone(folder / "checkpoint.pth", device="cpu")  # architecture inferred
    _assert_matches(backbone, folder)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_converted_hf_folder_matches_reference(fixtures_dir: Path, name: str, tmp_path: Path) -> None:
    folder = fixtures_dir / name
    converted = convert_checkpoint(folder / "checkpoint.pth", tmp_path / "hf")
    _assert_matches(load_backbone(converted, device="cpu"), folder)


def test_inferred_architecture_matches_fixture_kwargs(fixtures_dir: Path) -> None:
    for name in FIXTURE_NAMES:
        kwargs = json.loads((fixtures_dir / name / "arch.json").read_text())["kwargs"]
        backbone = load_backbone(fixtures_dir / name / "checkpoint.pth", device="cpu")
        if "embed_dim" in kwargs:
            config = backbone.hf.config
            assert config.hidden_size == kwargs["embed_dim"]
            assert config.num_hidden_layers == kwargs["depth"]
            assert config.num_attention_heads == kwargs["num_heads"]
            assert config.use_gated_mlp == (kwargs["ffn_layer"] == "swiglu")
            assert backbone.n_storage_tokens == kwargs["n_storage_tokens"]
            assert backbone.patch_size == kwargs["patch_size"]
        else:
            assert backbone.embed_dims == kwargs["dims"]
            assert list(backbone.hf.config.depths) == kwargs["depths"]
