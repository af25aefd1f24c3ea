from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from dinotune.data.config import DataConfig, load_data_config
from dinotune.data.datasets import (
    ClassificationDataset,
    SegmentationDataset,
    UnlabelledDataset,
    build_datasets,
    class_weights,
    weighted_sampler,
)
from dinotune.data.decode import build_lut
from dinotune.data.formats import Sample
from dinotune.data.transforms import PRESETS, build_transform
from dinotune.errors import ConfigError, DataError
from tests.data.conftest import make_defect_imagefolder, rgb, save, write_palette_mask

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_classification_dataset_skip_vs_error(tmp_path, caplog):
    good = save(tmp_path / "good.png", rgb(seed=1))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    samples = [Sample(good, 0), Sample(bad, 1)]
    tf = build_transform(train=False, image_size=32, mean=MEAN, std=STD)
    ds = ClassificationDataset(samples, tf, on_bad_file="skip")
    with caplog.at_level(logging.WARNING, logger="dinotune.data.datasets"):
        item = ds[1]
        ds[1]
    assert item["path"] == str(good) and item["index"] == 0 and item["label"].item() == 0
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    warnings = [r for r in caplog.records if "bad.jpg" in r.getMessage()]
    assert len(warnings) == 1  # logged once
    strict = ClassificationDataset(samples, tf, on_bad_file="error")
    with pytest.raises(DataError, match=r"bad\.jpg: not an image"):
        strict[1]
    with pytest.raises(DataError, match="none of the 1 files"):
        ClassificationDataset([Sample(bad, 0)], tf)[0]


def test_normalisation_uses_given_mean_std(tmp_path):
    p = save(tmp_path / "gray.png", np.full((32, 32, 3), 255, np.uint8))
    tf = build_transform(train=False, image_size=32, mean=MEAN, std=STD)
    img = ClassificationDataset([Sample(p, 0)], tf)[0]["image"]
    expected = (1 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(img[:, 0, 0].numpy(), expected, rtol=1e-5)


def test_multilabel_targets_are_multi_hot(tmp_path):
    p = save(tmp_path / "a.png", rgb())
    ds = ClassificationDataset([Sample(p, [0, 2])], None, num_classes=3, multilabel=True)
    assert ds[0]["label"].tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("resize", ["crop", "pad", "keep"])
def test_presets_work_for_any_channel_count(preset, channels, resize):
    tf = build_transform(
        train=True,
        image_size=32,
        augment=preset,
        resize=resize,
        channels=channels,
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )
    image = np.random.default_rng(0).random((40, 60, channels), dtype=np.float32)
    mask = np.zeros((40, 60), np.uint8)
    out = tf(image, mask)
    h, w = out["image"].shape[1:]
    assert out["image"].shape[0] == channels and out["mask"].shape == (h, w)
    assert h % 16 == 0 and w % 16 == 0
    if resize != "keep":
        assert (h, w) == (32, 32)
    else:
        assert (h, w) == (16, 32)  # longer side -> 32, 40*32/60 = 21.3 rounded to one 16 px patch


def test_keep_mode_rounds_to_patch_multiples():
    tf = build_transform(train=False, image_size=64, resize="keep", mean=MEAN, std=STD)
    out = tf(np.zeros((100, 200, 3), np.float32), np.zeros((100, 200), np.uint8))
    assert out["image"].shape == (3, 32, 64) and out["mask"].shape == (32, 64)


def test_pad_mode_fills_mask_with_ignore():
    tf = build_transform(train=False, image_size=32, resize="pad", mean=MEAN, std=STD)
    out = tf(np.ones((16, 32, 3), np.float32), np.zeros((16, 32), np.uint8))
    assert out["mask"][0, 0] == 255 and out["mask"][16, 16] == 0


def test_medical_preset_has_no_flip_by_default():
    assert PRESETS["medical"].hflip is False and PRESETS["medical"].rotate <= 10
    tf = build_transform(train=True, image_size=32, augment="medical", mean=MEAN, std=STD)
    names = [type(t).__name__ for t in tf.pipeline.transforms]
    assert "HorizontalFlip" not in names
    tf = build_transform(train=True, image_size=32, augment="medical", hflip=True, mean=MEAN, std=STD)
    assert "HorizontalFlip" in [type(t).__name__ for t in tf.pipeline.transforms]


def test_norm_stats_must_match_channels():
    with pytest.raises(ConfigError, match="channels=5"):
        build_transform(train=False, image_size=32, channels=5, mean=MEAN, std=STD)
    one = build_transform(train=False, image_size=32, channels=1, mean=MEAN, std=STD)
    assert one.mean.shape == (1,)


def test_segmentation_dataset_with_mapping(tmp_path):
    img = save(tmp_path / "i.png", rgb(32, 32))
    mask = write_palette_mask(tmp_path / "m.png", np.tile(np.array([0, 1, 2, 255]), (32, 8)))
    tf = build_transform(train=False, image_size=32, mean=MEAN, std=STD)
    ds = SegmentationDataset([Sample(img, mask)], tf, lut=build_lut({0: 0, 1: 1, 2: 1}))
    item = ds[0]
    assert item["mask"].dtype == torch.long and sorted(item["mask"].unique().tolist()) == [0, 1, 255]
    big = write_palette_mask(tmp_path / "big.png", np.zeros((40, 40)))
    with pytest.raises(DataError, match=r"big\.png: mask is 40x40 but image"):
        SegmentationDataset([Sample(img, big)], tf, on_bad_file="error")[0]


def test_unlabelled_dataset_reads_every_valid_tricky_file(tricky):
    paths = [p for k, p in tricky.items() if k not in ("mask", "tiff4")]
    tf = build_transform(train=False, image_size=32, mean=MEAN, std=STD)
    ds = UnlabelledDataset(paths, tf, on_bad_file="error")
    for i in range(len(ds)):
        assert ds[i]["image"].shape == (3, 32, 32) and ds[i]["index"] == i
    four = UnlabelledDataset([tricky["tiff4"]], None, channels=4, on_bad_file="error")[0]["image"]
    assert four.shape == (4, 20, 30) and float(four.min()) >= 0 and float(four.max()) <= 1


def test_class_weights_and_sampler():
    labels = [0] * 8 + [1] * 2
    w = class_weights(labels, 3)
    assert w[1] == pytest.approx(4 * w[0]) and w[2] == 0 and w[:2].mean() == pytest.approx(1.0)
    sampler = weighted_sampler(labels, num_samples=2000, seed=0)
    drawn = [labels[i] for i in sampler]
    assert 0.4 < np.mean(drawn) < 0.6  # rare class drawn about half the time
    assert list(weighted_sampler(labels, seed=1)) == list(weighted_sampler(labels, seed=1))


def test_build_datasets_from_config(tmp_path):
    root = tmp_path / "ds"
    make_defect_imagefolder(root, n_cat=12, n_dog=4)
    cfg = load_data_config({"root": str(root), "image_size": 32, "augment": "industrial"})
    spec, sets = build_datasets(cfg, MEAN, STD, run_dir=tmp_path / "run")
    assert set(sets) == {"train", "val", "test"} and spec.classes == ["cat", "dog"]
    batch = torch.utils.data.DataLoader(sets["train"], batch_size=len(sets["train"]))
    items = next(iter(batch))
    assert items["image"].shape[1:] == (3, 32, 32)
    assert not any(p.endswith(("zero.jpg", "notes.jpg", "trunc.jpg", "trunc.png")) for p in items["path"])


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'image_sze'; did you mean 'image_size'"):
        load_data_config({"root": "x", "image_sze": 224})
    with pytest.raises(ConfigError, match=r"scaling.*data stats"):
        load_data_config({"root": "x", "scaling": {"mode": "percentile"}})
    with pytest.raises(ConfigError, match="mean has 3 values but channels=4"):
        load_data_config({"root": "x", "channels": 4, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1, 1]})
    (tmp_path / "c.yaml").write_text("data:\n  root: /data\n  channels: 1\n")
    assert load_data_config(tmp_path / "c.yaml").channels == 1
    assert all(f.description for f in DataConfig.model_fields.values())
