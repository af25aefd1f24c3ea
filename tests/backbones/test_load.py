"""Every architecture is known, random backbones work, and loading fails fast and clearly offline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from dinotune import load_backbone
from dinotune.backbones.convert import build_hf_model
from dinotune.backbones.load import spec_to_arch
from dinotune.backbones.specs import ARCHS, SAT493M_MEAN, get_arch
from dinotune.errors import BackboneNotFoundError, CheckpointError, ConfigError

# Parameter counts from the official release table (millions).
RELEASED = {
    "vits16": 21,
    "vits16plus": 29,
    "vitb16": 86,
    "vitl16": 300,
    "vith16plus": 840,
    "vit7b16": 6716,
    "convnext_tiny": 29,
    "convnext_small": 50,
    "convnext_base": 89,
    "convnext_large": 198,
}


@pytest.mark.parametrize("name", RELEASED)
def test_released_architectures_have_the_published_size(name: str) -> None:
    with torch.device("meta"):
        model = build_hf_model(spec_to_arch(get_arch(name)))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    tolerance = 0.03 if name.startswith("vit") else 0.06  # the table rounds down
    assert abs(millions - RELEASED[name]) / RELEASED[name] < tolerance, millions
    assert get_arch(name).hub_ids


def test_meta_names_with_prefix_and_typos() -> None:
    assert get_arch("dinov3_vitl16").name == "vitl16"
    with pytest.raises(ConfigError, match="Did you mean 'vitb16'"):
        get_arch("vitb61")


@pytest.mark.parametrize("name", ["vit_test16", "convnext_test"])
def test_random_backbone_has_the_official_api(name: str) -> None:
    backbone = load_backbone(f"random:{name}", device="cpu")
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = backbone.forward_features(x)
        layers = backbone.get_intermediate_layers(x, n=[0, 1], reshape=True)
    dim = backbone.embed_dim
    assert features["x_norm_clstoken"].shape == (2, dim)
    assert features["x_storage_tokens"].shape == (2, backbone.n_storage_tokens, dim)
    if backbone.info.family == "vit":
        assert features["x_norm_patchtokens"].shape == (2, 4 * 6, dim)
        assert [t.shape for t in layers] == [(2, dim, 4, 6)] * 2
    else:
        assert features["x_norm_patchtokens"].shape == (2, 2 * 3, dim)
        assert [t.shape[1] for t in layers] == backbone.embed_dims[:2]
    assert not backbone.training


def test_random_backbone_is_reproducible_and_warns() -> None:
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        first = load_backbone("random:vit_test16", device="cpu")
    second = load_backbone("random:vit_test16", device="cpu")
    other = load_backbone("random:vit_test16", device="cpu", seed=1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(first(x), second(x))
        assert not torch.allclose(first(x), other(x))
    assert first.info.identity == second.info.identity != other.info.identity


def test_vit_rejects_sizes_that_are_not_patch_multiples() -> None:
    backbone = load_backbone("random:vit_test16", device="cpu")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        backbone(torch.randn(1, 3, 30, 32))


def test_grayscale_stem_gives_the_rgb_features_of_a_grey_image(fixtures_dir: Path) -> None:
    source = fixtures_dir / "vits16_style_depth3" / "checkpoint.pth"
    rgb = load_backbone(source, device="cpu")
    gray = load_backbone(source, device="cpu", in_chans=1)
    image = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(gray(image), rgb(image.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)
    assert gray.info.in_chans == 1 and len(gray.info.mean) == 1
    assert gray.info.identity != rgb.info.identity


def test_multiband_stem() -> None:
    backbone = load_backbone("random:convnext_test", device="cpu", in_chans=4)
    with torch.no_grad():
        assert backbone(torch.randn(1, 4, 64, 64)).shape == (1, backbone.embed_dim)
    assert len(backbone.info.std) == 4


def test_uncached_hub_id_fails_fast_with_instructions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(BackboneNotFoundError, match="gated: accept the license"):
        load_backbone("facebook/dinov3-vits16-pretrain-lvd1689m", device="cpu")
    assert time.perf_counter() - start < 10


def test_unreachable_hub_fails_fast_without_offline_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import socket

    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(socket, "create_connection", refuse)
    start = time.perf_counter()
    with pytest.raises(BackboneNotFoundError, match=r"cannot be reached.*gated"):
        load_backbone("facebook/dinov3-vitb16-pretrain-lvd1689m", device="cpu")
    assert time.perf_counter() - start < 10


def test_missing_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_backbone(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_backbone(tmp_path)


def test_satellite_weights_get_satellite_statistics(fixtures_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"
    link.symlink_to(fixtures_dir / "vits16_style_depth3" / "checkpoint.pth")
    assert load_backbone(link, device="cpu").info.mean == SAT493M_MEAN
    assert load_backbone(fixtures_dir / "vits16_style_depth3" / "checkpoint.pth").info.mean != SAT493M_MEAN


def test_all_twelve_names_are_known() -> None:
    released = [n for n, s in ARCHS.items() if not s.for_tests]
    assert len(released) == 10  # 12 releases = 10 architectures + 2 satellite weight tags
    tags = sum(len(s.hub_ids) for s in ARCHS.values())
    assert tags == 12


def test_cached_hub_model_loads_without_network(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import socket

    from huggingface_hub import constants

    from dinotune.verbs.convert import convert_checkpoint
    from dinotune.verbs.quickstart import find_cached_dinov3

    repo = tmp_path / "hub" / "models--facebook--dinov3-vits16-pretrain-lvd1689m"
    snapshot = repo / "snapshots" / "0123abcd"
    convert_checkpoint(fixtures_dir / "vits16_style_depth3" / "checkpoint.pth", tmp_path / "hf")
    shutil.copytree(tmp_path / "hf", snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    backbone = load_backbone("facebook/dinov3-vits16-pretrain-lvd1689m", device="cpu")
    assert backbone.info.weights == "lvd1689m" and backbone.embed_dim == 192
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert find_cached_dinov3() == "facebook/dinov3-vits16-pretrain-lvd1689m"
