"""Conversion is lossless, and a wrong or broken checkpoint fails with a message naming keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinotune import load_backbone
from dinotune.backbones.convert import DROPPED_FILE
from dinotune.errors import CheckpointError
from dinotune.verbs.convert import convert_checkpoint
from tests.conftest import FIXTURE_NAMES


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_round_trip_gives_identical_tensors(fixtures_dir: Path, name: str, tmp_path: Path) -> None:
    source = fixtures_dir / name / "checkpoint.pth"
    folder = convert_checkpoint(source, tmp_path / "hf")
    back = convert_checkpoint(folder, tmp_path / "back.pth")
    original = torch.load(source, weights_only=True)
    restored = torch.load(back, weights_only=True)
    assert set(original) == set(restored)
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key


def test_converted_folder_loads_in_plain_transformers(fixtures_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    folder = convert_checkpoint(fixtures_dir / "vits16_style_depth3" / "checkpoint.pth", tmp_path / "hf")
    model = AutoModel.from_pretrained(folder)
    ours = load_backbone(folder, device="cpu")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(pixel_values=x).pooler_output
        got = ours(x)
    torch.testing.assert_close(got, expected)


def test_masked_k_bias_is_dropped_and_restored(fixtures_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = convert_checkpoint(fixtures_dir / "vits16_style_depth3" / "checkpoint.pth", tmp_path / "hf")
    dropped = load_file(str(folder / DROPPED_FILE))
    assert "rope_embed.periods" in dropped
    assert "blocks.0.attn.qkv.bias_mask" in dropped
    assert dropped["blocks.0.attn.qkv.k_bias"].shape == (192,)


def test_without_dropped_file_the_round_trip_still_loads(fixtures_dir: Path, tmp_path: Path) -> None:
    source = fixtures_dir / "vits16_style_depth3" / "checkpoint.pth"
    folder = convert_checkpoint(source, tmp_path / "hf")
    (folder / DROPPED_FILE).unlink()
    back = convert_checkpoint(folder, tmp_path / "back.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(back, device="cpu")(x), load_backbone(source, device="cpu")(x))


def _save(sd: dict, path: Path) -> Path:
    torch.save(sd, path)
    return path


def test_missing_key_is_named(fixtures_dir: Path, tmp_path: Path) -> None:
    sd = torch.load(fixtures_dir / "vits16_style_depth3" / "checkpoint.pth", weights_only=True)
    del sd["blocks.1.mlp.fc2.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks\.1\.mlp\.fc2\.weight"):
        load_backbone(_save(sd, tmp_path / "broken.pth"), device="cpu")


def test_unexpected_key_is_named(fixtures_dir: Path, tmp_path: Path) -> None:
    sd = torch.load(fixtures_dir / "convnext_tiny_style" / "checkpoint.pth", weights_only=True)
    sd["stages.0.0.extra_scale"] = torch.ones(3)
    with pytest.raises(CheckpointError, match=r"stages\.0\.0\.extra_scale"):
        load_backbone(_save(sd, tmp_path / "extra.pth"), device="cpu")


def test_wrong_shape_is_named_not_a_torch_error(fixtures_dir: Path, tmp_path: Path) -> None:
    sd = torch.load(fixtures_dir / "vits16_style_depth3" / "checkpoint.pth", weights_only=True)
    sd["blocks.2.norm2.weight"] = torch.ones(100)
    with pytest.raises(CheckpointError, match=r"wrong shapes \(1\): blocks\.2\.norm2\.weight \(100,\)"):
        load_backbone(_save(sd, tmp_path / "shape.pth"), device="cpu")


def test_missing_block_in_the_middle_is_named(fixtures_dir: Path, tmp_path: Path) -> None:
    sd = torch.load(fixtures_dir / "vits16_style_depth3" / "checkpoint.pth", weights_only=True)
    sd = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError, match=r"missing keys.*blocks\.1\.attn\.qkv\.weight"):
        load_backbone(_save(sd, tmp_path / "hole.pth"), device="cpu")


def test_truncated_file_fails_clearly(fixtures_dir: Path, tmp_path: Path) -> None:
    data = (fixtures_dir / "vits16_style_depth3" / "checkpoint.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth.*truncated"):
        load_backbone(path, device="cpu")


def test_expected_arch_mismatch_is_explained(fixtures_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"hidden_size: checkpoint 192 vs vits16 384"):
        load_backbone(fixtures_dir / "vits16_style_depth3" / "checkpoint.pth", arch="vits16", device="cpu")


def test_not_a_dinov3_state_dict(tmp_path: Path) -> None:
    path = _save({"fc.weight": torch.ones(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not look like a DINOv3"):
        load_backbone(path, device="cpu")


def test_training_checkpoint_wrapper_is_unwrapped(fixtures_dir: Path, tmp_path: Path) -> None:
    sd = torch.load(fixtures_dir / "vithplus_style_depth2" / "checkpoint.pth", weights_only=True)
    wrapped = {"teacher": {f"backbone.{k}": v for k, v in sd.items()}}
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        got = load_backbone(_save(wrapped, tmp_path / "train.pth"), device="cpu")(x)
        want = load_backbone(fixtures_dir / "vithplus_style_depth2" / "checkpoint.pth", device="cpu")(x)
    torch.testing.assert_close(got, want)


def test_convert_refuses_to_overwrite(fixtures_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    with pytest.raises(CheckpointError, match="exists"):
        convert_checkpoint(fixtures_dir / "convnext_tiny_style" / "checkpoint.pth", tmp_path / "exists")
