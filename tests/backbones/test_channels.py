"""The stem adaptation keeps RGB intact, grey exact, and bands distinguishable to a frozen backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from dinotune.backbones import load_backbone
from dinotune.backbones.channels import adapt_stats, adapt_stem_weight
from dinotune.config import validate
from dinotune.verbs.probe import ProbeConfig, run_probe


def test_rgb_is_untouched_and_bands_cycle_the_rgb_filters() -> None:
    weight = torch.randn(8, 3, 4, 4)
    assert adapt_stem_weight(weight, 3) is weight
    torch.testing.assert_close(adapt_stem_weight(weight, 1), weight.sum(1, keepdim=True))
    six = adapt_stem_weight(weight, 6)
    torch.testing.assert_close(six[:, :3], weight * 0.5)
    torch.testing.assert_close(six[:, 3:], weight * 0.5)
    assert adapt_stats((0.1, 0.2, 0.3), 4) == (0.1, 0.2, 0.3, 0.1)
    assert adapt_stats((0.1, 0.2, 0.3), 1) == pytest.approx((0.2,))


def test_swapping_two_bands_moves_the_features_like_another_image() -> None:
    torch.manual_seed(0)
    backbone = load_backbone("random:vit_test16", device="cpu", in_chans=6)
    images = torch.rand(8, 6, 32, 32)
    swapped = images[:, [0, 1, 2, 4, 3, 5]]  # bands 4 and 5 (filters R and G) exchanged
    with torch.no_grad():
        a, b = backbone(images), backbone(swapped)
    swap_distance = (a - b).norm(dim=1).mean()
    between_images = torch.cdist(a, a)[~torch.eye(8, dtype=torch.bool)].mean()
    assert swap_distance > 0.2 * between_images, (float(swap_distance), float(between_images))


def test_frozen_probe_sees_classes_that_differ_only_in_bands_4_to_6(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "bands"
    for split, per_class in (("train", 30), ("val", 10), ("test", 20)):
        for label in range(3):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.uniform(0, 0.5, (32, 32, 6)).astype(np.float32)
                image[:, :, 3 + label] += 0.5  # the class is which of bands 4, 5, 6 is bright
                tifffile.imwrite(folder / f"{i}.tif", image, photometric="minisblack", planarconfig="contig")
    cfg = validate(
        ProbeConfig,
        {
            "data": {"root": str(root), "image_size": 32, "channels": 6, "num_workers": 0},
            "backbone": {"source": "random:vit_test16"},
            "sweep": {"epochs": 30},
            "progress": False,
            "out": str(tmp_path / "run"),
            "cache_dir": str(tmp_path / "c"),
        },
    )
    metrics = run_probe(cfg).metrics
    assert metrics["probe"]["test"]["accuracy"] >= 0.9, metrics["summary"]
