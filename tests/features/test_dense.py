"""The dense feature cache of frozen segmentation: maps equal the live backbone's, flips stored as a second
view, content-addressed reuse, recovery from a damaged shard, and the segment verb training from it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dinotune import load_backbone
from dinotune.data.bundled import make_segmentation_dataset
from dinotune.data.datasets import SegmentationDataset
from dinotune.data.formats import load_dataset
from dinotune.data.transforms import build_transform
from dinotune.features.dense import DenseFeatureCache, cache_views
from tests.training_fixtures import segment_config


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random:vit_test16", device="cpu").eval()


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory) -> Path:
    return make_segmentation_dataset(tmp_path_factory.mktemp("dense") / "digits", 10, size=48)


def _dataset(root: Path, backbone) -> SegmentationDataset:
    spec = load_dataset(root, "segment")
    tf = build_transform(train=False, image_size=32, mean=backbone.info.mean, std=backbone.info.std)
    return SegmentationDataset(spec.splits["train"], tf, colours=spec.colours)


def test_views_follow_the_augmentation() -> None:
    assert cache_views(False, "none", None)[0] == 0  # a training backbone changes its features
    assert cache_views(True, "default", None)[0] == 0  # random crops cannot be replayed from stored maps
    assert cache_views(True, "none", None)[0] == 1
    assert cache_views(True, "none", True)[0] == 2  # the flip is stored as a second view


def test_maps_match_the_live_backbone_and_are_reused(tmp_path: Path, backbone, seg_data: Path) -> None:
    source = _dataset(seg_data, backbone)
    cache = DenseFeatureCache(tmp_path, backbone, [0, 1], {"test": 1}, views=2)
    dataset, extracted = cache.dataset(source, batch_size=3)
    assert extracted == len(source) == len(dataset)
    item = source[4]
    with torch.no_grad():
        live = backbone.get_intermediate_layers(item["image"][None], n=[0, 1], reshape=True, norm=True)
        flipped = backbone.get_intermediate_layers(item["image"][None].flip(-1), n=[0, 1], reshape=True, norm=True)
    *maps, masks = dataset._arrays(dataset.rows[4][0])
    row = dataset.rows[4][1]
    for layer, (a, b) in enumerate(zip(live, flipped, strict=True)):
        scale = float(a.abs().max())
        assert np.abs(maps[layer][row, 0].astype(np.float32) - a[0].numpy()).max() <= 2e-3 * scale
        assert np.abs(maps[layer][row, 1].astype(np.float32) - b[0].numpy()).max() <= 2e-3 * scale
    assert (masks[row, 0] == item["mask"].numpy()).all()
    assert (masks[row, 1] == item["mask"].flip(-1).numpy()).all()
    assert isinstance(maps[0], np.memmap)  # read from disk, not loaded
    flips = set()
    for seed in range(20):  # the view is drawn per item, seeded as an albumentations pipeline would be
        dataset.pipeline.set_random_seed(seed)
        flips.add(
            bool(
                (dataset[4]["mask"] == item["mask"].flip(-1)).all()
                and not (item["mask"] == item["mask"].flip(-1)).all()
            )
        )
    assert flips == {True, False}
    _, again = DenseFeatureCache(tmp_path, backbone, [0, 1], {"test": 1}, views=2).dataset(source)
    assert again == 0  # same content: nothing extracted


def test_damaged_shard_is_extracted_again(tmp_path: Path, backbone, seg_data: Path, caplog) -> None:
    source = _dataset(seg_data, backbone)
    cache = DenseFeatureCache(tmp_path, backbone, [1], {"test": 2}, views=1)
    cache.dataset(source)
    array = next(cache.dir.glob("maps-*.npy"))
    data = bytearray(array.read_bytes())
    data[-3] ^= 0xFF
    array.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        dataset, extracted = DenseFeatureCache(tmp_path, backbone, [1], {"test": 2}, views=1).dataset(source)
    assert extracted == len(source) and len(dataset) == len(source)
    assert "discarding shard" in caplog.text


def test_frozen_segmentation_trains_from_the_cache(
    tmp_path: Path, seg_data: Path, monkeypatch, caplog, one_torch_thread
) -> None:
    from dinotune.verbs.segment import run_segment

    monkeypatch.setenv("DINOTUNE_HOME", str(tmp_path / "home"))
    cfg = segment_config(seg_data, tmp_path / "run", trainer={"max_epochs": 2, "progress_bar": False})
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("ignore")
        result = run_segment(cfg)
    assert "dense feature cache: train 8 crops" in caplog.text
    assert any((tmp_path / "home" / "dense").rglob("maps-*.npy"))
    assert 0.0 <= result.metrics["summary"]["val/miou"] <= 1.0
