"""Cache-sized chunks: the largest activation per image is measured right, the chunk follows the cache, and
chunked extraction gives the features of the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinotune import load_backbone
from dinotune.features import chunks
from dinotune.features import engines as engines_module
from dinotune.features.chunks import ActivationMeter, in_chunks, last_level_cache_bytes
from dinotune.features.engine import FeatureExtractor
from dinotune.features.extract import extract_features


@pytest.fixture(scope="module")
def vit():
    return load_backbone("random:vit_test16", device="cpu").eval()


def test_the_meter_finds_the_mlp_activation_of_a_vit_and_of_a_convnext(vit) -> None:
    cfg = vit.hf.config
    tokens = (64 // cfg.patch_size) ** 2 + 1 + cfg.num_register_tokens
    with ActivationMeter(vit) as meter:
        vit(torch.zeros(3, 3, 64, 64))  # per image, whatever the batch
    assert meter.bytes_per_image == tokens * cfg.intermediate_size * 4  # the MLP's hidden layer, fp32
    assert not any(m._forward_hooks for m in vit.modules())  # the hooks are gone afterwards

    convnext = load_backbone("random:convnext_test", device="cpu").eval()
    width = convnext.hf.config.hidden_sizes[0]
    with ActivationMeter(convnext) as meter:
        convnext(torch.zeros(1, 3, 64, 64))
    assert meter.bytes_per_image == (64 // 4) ** 2 * 4 * width * 4  # stage 1's MLP at stride 4


def test_the_chunk_is_what_fits_in_a_third_of_the_cache(monkeypatch) -> None:
    meter = ActivationMeter(torch.nn.Identity())
    meter.bytes_per_image = 1_000_000
    monkeypatch.setattr(chunks, "last_level_cache_bytes", lambda: 32 * 2**20)
    assert meter.chunk() == 11  # 33.5 MB / 3 / 1 MB
    monkeypatch.setattr(chunks, "last_level_cache_bytes", lambda: 2**20)
    assert meter.chunk() == 1  # never zero
    meter.bytes_per_image = 1
    assert meter.chunk() == chunks.MAX_CHUNK


def test_the_cache_size_is_read_from_sysfs(tmp_path: Path) -> None:
    for index, (level, size) in enumerate([(1, "48K"), (2, "1024K"), (3, "32768K")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(f"{size}\n")
        (tmp_path / f"index{index}" / "level").write_text(f"{level}\n")
    assert last_level_cache_bytes(tmp_path) == 32 * 2**20
    assert last_level_cache_bytes(tmp_path / "absent") == chunks.DEFAULT_CACHE_BYTES


def test_chunked_features_equal_the_whole_batch(vit) -> None:
    x = torch.randn(7, 3, 32, 32)
    whole = extract_features(vit, x)
    calls: list[int] = []

    def engine(images):
        calls.append(len(images))
        return extract_features(vit, images)

    got = in_chunks(engine, x, 3)
    assert calls == [3, 3, 1]
    for kind in whole:
        torch.testing.assert_close(got[kind], whole[kind], atol=1e-5, rtol=1e-5)


def test_the_extractor_runs_its_engine_in_cache_sized_chunks(vit, monkeypatch) -> None:
    """On the CPU: the first eager image sizes the chunks; every later call is at most a chunk."""
    with ActivationMeter(vit) as meter:
        vit(torch.zeros(1, 3, 32, 32))
    monkeypatch.setattr(chunks, "last_level_cache_bytes", lambda: 3 * 2 * meter.bytes_per_image)  # 2 images
    calls: list[int] = []
    real = engines_module.EagerEngine.__call__
    monkeypatch.setattr(engines_module.EagerEngine, "__call__", lambda self, x: calls.append(len(x)) or real(self, x))
    extractor = FeatureExtractor(vit, engine="eager")
    x = torch.randn(6, 3, 32, 32)
    got = extractor(x)
    assert extractor.chunk == 2 and calls == [1, 2, 2, 1]  # the measured image, then chunks of the rest
    calls.clear()
    later = extractor(x)
    assert calls == [2, 2, 2] and extractor.describe()["images_per_call"] == 2
    expected = extract_features(vit, x)
    for kind in expected:
        torch.testing.assert_close(got[kind], expected[kind], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(later[kind], expected[kind], atol=1e-5, rtol=1e-5)
