"""The feature cache: hits, misses, content-based invalidation, and recovery from torn shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinotune import load_backbone
from dinotune.features.extract import extract_features
from dinotune.verbs.embed import make_cache


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random:vit_test16", device="cpu")


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_hit_miss_and_only_changed_images_re_extracted(tmp_path: Path, backbone) -> None:
    paths = _images(tmp_path / "imgs", 6)
    cache = make_cache(backbone, 32, cache_dir=tmp_path / "cache")
    first = cache.get(paths, batch_size=4, progress=False)
    assert first.extracted == 6 and first.features["cls"].shape == (6, 64)
    second = make_cache(backbone, 32, cache_dir=tmp_path / "cache").get(paths, progress=False)
    assert second.extracted == 0
    torch.testing.assert_close(second.features["cls"], first.features["cls"])

    Image.new("RGB", (40, 48), color=(255, 0, 0)).save(paths[2])  # change one image
    third = cache.get(paths, progress=False)
    assert third.extracted == 1
    assert not torch.allclose(third.features["cls"][2], first.features["cls"][2])
    torch.testing.assert_close(third.features["cls"][[0, 1, 3, 4, 5]], first.features["cls"][[0, 1, 3, 4, 5]])


def test_cached_features_equal_direct_extraction(tmp_path: Path, backbone) -> None:
    paths = _images(tmp_path / "imgs", 3)
    cache = make_cache(backbone, 32, cache_dir=tmp_path / "cache")
    got = cache.get(paths, progress=False).features
    batch = torch.stack([cache.preprocessing.transform(16)(
        np.asarray(Image.open(p), dtype=np.float32) / 255)["image"] for p in paths])
    want = extract_features(backbone, batch)
    for kind in want:
        torch.testing.assert_close(got[kind], want[kind])


def test_key_changes_invalidate(tmp_path: Path, backbone) -> None:
    paths = _images(tmp_path / "imgs", 2)
    make_cache(backbone, 32, cache_dir=tmp_path / "cache").get(paths, progress=False)
    assert make_cache(backbone, 48, cache_dir=tmp_path / "cache").get(paths, progress=False).extracted == 2
    other = load_backbone("random:vit_test16", device="cpu", seed=1)
    assert make_cache(other, 32, cache_dir=tmp_path / "cache").get(paths, progress=False).extracted == 2
    assert make_cache(backbone, 32, "pad", cache_dir=tmp_path / "cache").get(paths, progress=False).extracted == 2


def test_torn_shard_is_detected_and_rebuilt(tmp_path: Path, backbone) -> None:
    paths = _images(tmp_path / "imgs", 4)
    cache = make_cache(backbone, 32, cache_dir=tmp_path / "cache")
    first = cache.get(paths, progress=False)
    (shard,) = cache.dir.glob("shard-*.safetensors")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    again = cache.get(paths, progress=False)
    assert again.extracted == 4
    torch.testing.assert_close(again.features["cls"], first.features["cls"])
    assert not list(cache.dir.glob("*.tmp"))


def test_bad_files_are_reported_not_fatal(tmp_path: Path, backbone) -> None:
    paths = _images(tmp_path / "imgs", 3)
    bad = tmp_path / "imgs" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = make_cache(backbone, 32, cache_dir=tmp_path / "cache").get([*paths, bad], progress=False)
    assert result.paths == paths and bad in result.bad_files
    assert result.features["cls"].shape[0] == 3


def test_last4_kind_for_deeper_vits(tmp_path: Path) -> None:
    deep = load_backbone("random:vit_tiny16", device="cpu")
    paths = _images(tmp_path / "imgs", 2)
    features = make_cache(deep, 32, cache_dir=tmp_path / "cache").get(paths, progress=False).features
    assert features["cls_last4"].shape == (2, 4 * 192)
    torch.testing.assert_close(features["cls_last4"][:, -192:], features["cls"])
