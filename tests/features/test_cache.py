"""The feature cache: hits, misses, content-based invalidation, recovery from torn or bit-flipped shards
and damaged hash tables, and extraction that survives an interruption."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinotune import load_backbone
from dinotune.atomic import atomic_path
from dinotune.features import cache as cache_module
from dinotune.features import hashes as hashes_module
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
    batch = torch.stack(
        [cache.preprocessing.transform(16)(np.asarray(Image.open(p), dtype=np.float32) / 255)["image"] for p in paths]
    )
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


# ----- the content-addressed cache never serves stale or corrupt features -------------------------------


def _same_size_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Uncompressed PNGs of one size: rewriting one with other pixels keeps its byte count."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path, compress_level=0)
        paths.append(path)
    return paths


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the stat table at once (files here are milliseconds old), so the stat fields alone must catch
    each change; by default files younger than 2 s are always hashed again."""
    monkeypatch.setattr(hashes_module, "RACY_NS", 0)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("dinotune")]


@pytest.mark.parametrize("trust_stat_table", [True, False])
def test_same_size_rewrite_with_restored_mtime_is_re_extracted(
    tmp_path: Path, backbone, trust_stat_table: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if trust_stat_table:
        monkeypatch.setattr(hashes_module, "RACY_NS", 0)
    paths = _same_size_images(tmp_path / "imgs", 4)
    cache = make_cache(backbone, 32, cache_dir=tmp_path / "cache")
    first = cache.get(paths, progress=False)
    if trust_stat_table:
        assert cache.get(paths, progress=False).extracted == 0 and cache.hashes.hashed == 0  # stat table used
    before = paths[1].stat()
    Image.fromarray(np.full((40, 48, 3), 200, dtype=np.uint8)).save(paths[1], compress_level=0)
    os.utime(paths[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    after = paths[1].stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    again = cache.get(paths, progress=False)
    assert again.extracted == 1
    assert not torch.allclose(again.features["cls"][1], first.features["cls"][1])
    torch.testing.assert_close(again.features["cls"][[0, 2, 3]], first.features["cls"][[0, 2, 3]])


def test_swapped_same_size_same_mtime_files_swap_their_features(tmp_path: Path, backbone, settled: None) -> None:
    a, b = _same_size_images(tmp_path / "imgs", 2)
    stamp = a.stat().st_mtime_ns
    for path in (a, b):
        os.utime(path, ns=(stamp, stamp))
    cache = make_cache(backbone, 32, cache_dir=tmp_path / "cache")
    first = cache.get([a, b], progress=False).features["cls"]
    assert cache.get([a, b], progress=False).extracted == 0 and cache.hashes.hashed == 0

    os.rename(a, tmp_path / "imgs" / "swap")  # as an archive extraction or a sync tool would
    os.rename(b, a)
    os.rename(tmp_path / "imgs" / "swap", b)
    assert a.stat().st_size == b.stat().st_size and a.stat().st_mtime_ns == b.stat().st_mtime_ns == stamp

    swapped = cache.get([a, b], progress=False)
    assert cache.hashes.hashed == 2 and swapped.extracted == 0  # both contents were already cached
    torch.testing.assert_close(swapped.features["cls"], first[[1, 0]])


def test_flipped_byte_in_shard_data_is_detected_and_rebuilt(
    tmp_path: Path, backbone, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _images(tmp_path / "imgs", 4)
    cache = make_cache(backbone, 32, cache_dir=tmp_path / "cache")
    first = cache.get(paths, progress=False)
    (shard,) = cache.dir.glob("shard-*.safetensors")
    raw = bytearray(shard.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], "little")  # safetensors: u64 header length, header, data
    raw[data_start + (len(raw) - data_start) // 2] ^= 0x40  # one exponent bit: a huge value, as the tester saw
    shard.write_bytes(bytes(raw))

    caplog.set_level(logging.WARNING)
    again = cache.get(paths, progress=False)
    assert again.extracted == 4
    torch.testing.assert_close(again.features["cls"], first.features["cls"])
    torch.testing.assert_close(again.features["patch_mean"], first.features["patch_mean"])
    (warning,) = _warnings(caplog)
    assert shard.name in warning and "checksum" in warning
    assert cache.get(paths, progress=False).extracted == 0  # the rebuilt shard verifies


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"version": 2, "files": {"/x.png": [1, 2]}}', ""])
def test_damaged_hash_table_is_rebuilt_with_one_warning(
    tmp_path: Path, backbone, settled: None, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _images(tmp_path / "imgs", 3)
    cache = make_cache(backbone, 32, cache_dir=tmp_path / "cache")
    first = cache.get(paths, progress=False)
    table = cache.dir / "file_hashes.json"
    table.write_text(content)

    caplog.set_level(logging.WARNING)
    again = cache.get(paths, progress=False)
    assert again.extracted == 0 and cache.hashes.hashed == 3  # re-hashed; features found by content
    torch.testing.assert_close(again.features["cls"], first.features["cls"])
    (warning,) = _warnings(caplog)
    assert "file_hashes.json" in warning
    assert len(json.loads(table.read_text())["files"]) == 3  # rewritten whole
    cache.get(paths, progress=False)
    assert cache.hashes.hashed == 0


def test_interrupted_extraction_keeps_finished_shards_and_rerun_extracts_the_rest(
    tmp_path: Path, backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _images(tmp_path / "imgs", 10)
    cache = make_cache(backbone, 32, cache_dir=tmp_path / "cache")
    cache.shard_images = 4
    real_read, calls, shards_at_interrupt = cache_module.read_image, [], []

    def ctrl_c_at_seventh_image(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 7:  # batches of 2: three batches (6 images) are done
            shards_at_interrupt.append(len(list(cache.dir.glob("shard-*.safetensors"))))
            raise KeyboardInterrupt
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(cache_module, "read_image", ctrl_c_at_seventh_image)
    with pytest.raises(KeyboardInterrupt):
        cache.get(paths, batch_size=2, progress=False)
    assert shards_at_interrupt == [1]  # written while running: a SIGKILL there would still keep 4 images
    assert not list(cache.dir.glob("*.tmp"))
    monkeypatch.setattr(cache_module, "read_image", real_read)

    rerun = cache.get(paths, batch_size=2, progress=False)
    assert rerun.extracted == 4  # 10 images, 6 kept from the interrupted run
    reference = make_cache(backbone, 32, cache_dir=tmp_path / "fresh").get(paths, progress=False)
    for kind, value in reference.features.items():
        torch.testing.assert_close(rerun.features[kind], value)


def test_temp_file_of_a_killed_shard_writer_is_removed_when_the_cache_opens(
    tmp_path: Path, backbone, die_mid_write
) -> None:
    folder = make_cache(backbone, 32, cache_dir=tmp_path / "cache").dir

    def write(kill) -> None:
        with atomic_path(folder / "shard-0123456789abcdef.safetensors") as tmp:
            tmp.write_bytes(b"half a shard")
            kill()

    die_mid_write(write)
    (stale,) = folder.glob(".shard-*.tmp")
    make_cache(backbone, 32, cache_dir=tmp_path / "cache")
    assert not stale.exists() and not list(folder.glob("shard-*"))
