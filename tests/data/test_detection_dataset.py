"""The detection transform keeps boxes on their objects (eval: exactly, mapped back by `scale`; train:
through scale jitter, crop, pad and flip), and the Dataset/collate feed any image format as batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dinotune.data.boxes import load_detection
from dinotune.data.detection_dataset import DetectionDataset, collate_detection, detection_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _red_square_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.zeros((h, w, 3), np.float32)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1, 0] = 1.0
    return image


def _red_box(image: torch.Tensor) -> list[float] | None:
    """Bounding box (xyxy) of the pixels whose red clearly exceeds green, in a normalised CHW tensor."""
    rgb = image.numpy() * np.asarray(STD, np.float32)[:, None, None] + np.asarray(MEAN, np.float32)[:, None, None]
    ys, xs = np.nonzero(rgb[0] - rgb[1] > 0.5)
    return None if xs.size == 0 else [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_eval_resizes_the_longest_side_and_pads_bottom_right():
    box = (40, 10, 80, 30)
    image = _red_square_image(50, 120, box)
    out = detection_transform(False, 64, MEAN, STD)(image, np.asarray([box], np.float32), np.asarray([2]))
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    assert out["scale"] == pytest.approx(64 / 120)
    np.testing.assert_allclose(out["boxes"].numpy() / out["scale"], [box], atol=1e-4)  # back to original pixels
    assert out["labels"].tolist() == [2] and out["labels"].dtype == torch.int64
    found = _red_box(out["image"])
    np.testing.assert_allclose(found, out["boxes"][0].numpy(), atol=1.0)  # the box is where the square is
    padding = out["image"][:, round(50 * 64 / 120) + 1 :, :]  # below the resized image: black, normalised
    np.testing.assert_allclose(padding[0], -MEAN[0] / STD[0], atol=1e-5)


def test_train_augmentations_move_boxes_with_their_objects():
    box = (30, 20, 60, 44)
    image = _red_square_image(80, 100, box)
    transform = detection_transform(True, 64, MEAN, STD, seed=3)
    flipped = dropped = 0
    for _ in range(40):
        out = transform(image, np.asarray([box], np.float32), np.asarray([1]))
        assert out["image"].shape == (3, 64, 64)
        found = _red_box(out["image"])
        if len(out["boxes"]) == 0:  # cropped away (less than min_visibility left)
            dropped += 1
            continue
        np.testing.assert_allclose(out["boxes"][0].numpy(), found, atol=1.5)
        flipped += found[0] > 64 - found[2]  # the square starts left of centre; flipped, it ends right of it
        assert 64 / 100 * 0.75 - 1e-6 <= out["scale"] <= 64 / 100 * 1.25 + 1e-6
    assert 5 <= flipped <= 35 and dropped < 20


def test_dataset_and_collate_batch_any_image_format(tmp_path, shapes_coco):
    spec = load_detection(shapes_coco)
    grey16 = tmp_path / "g" / "images" / "train" / "grey.png"  # a 16-bit grey PNG with one box
    grey16.parent.mkdir(parents=True)
    pixels = np.zeros((48, 32), np.uint16)
    pixels[8:24, 4:20] = 60000
    Image.fromarray(pixels).save(grey16)
    (tmp_path / "g" / "labels" / "train").mkdir(parents=True)
    (tmp_path / "g" / "labels" / "train" / "grey.txt").write_text("0 0.375 0.333333 0.5 0.333333\n")
    (tmp_path / "g" / "classes.txt").write_text("blob\n")
    grey = load_detection(tmp_path / "g", val_fraction=0.0).splits["train"]
    samples = spec.splits["val"][:3] + grey
    dataset = DetectionDataset(samples, detection_transform(False, 64, MEAN, STD))
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_detection)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["index"].tolist() == [0, 1, 2, 3]
    assert [len(b) for b in batch["boxes"]] == [s.num_boxes for s in samples]
    assert all(b.dtype == torch.float32 for b in batch["boxes"]) and all(
        lab.dtype == torch.int64 for lab in batch["labels"]
    )
    for boxes, scale, sample in zip(batch["boxes"], batch["scale"], samples, strict=True):
        np.testing.assert_allclose(boxes.numpy() / scale.item(), sample.boxes, atol=1e-3)
    np.testing.assert_allclose(batch["boxes"][3].numpy(), [[4 * 4 / 3, 8 * 4 / 3, 20 * 4 / 3, 24 * 4 / 3]], atol=1e-3)
    grey_image = batch["image"][3]
    assert torch.equal(grey_image[0] * STD[0] + MEAN[0] > 0.5, grey_image[2] * STD[2] + MEAN[2] > 0.5)  # grey -> RGB


def test_each_dataloader_worker_augments_from_its_own_seed(monkeypatch):
    """Workers hold copies of one transform: reseeded from the worker seed, they differ from each other and
    from epoch to epoch, and the same worker seed gives the same augmentations (a resumed run repeats them)."""
    box = (30, 20, 60, 44)
    image = _red_square_image(80, 100, box)

    def outputs(worker_seed: int) -> list[float]:
        transform = detection_transform(True, 64, MEAN, STD, seed=0)  # what each worker receives
        info = type("Info", (), {"seed": worker_seed, "id": 0})()
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        return [transform(image, np.asarray([box], np.float32), np.asarray([1]))["scale"] for _ in range(6)]

    assert outputs(11) == outputs(11) and outputs(11) != outputs(12)


def test_seeding_per_item_repeats_the_augmentations_whatever_the_worker(monkeypatch):
    """`set_random_seed` (the training loader's per-item seed) fixes scale jitter, crop, flip and colour together,
    and a worker does not replace it with its worker seed: a resumed run sees the same items."""
    box = (30, 20, 60, 44)
    image = _red_square_image(80, 100, box)

    def item(seed: int, worker_seed: int | None) -> dict:
        transform = detection_transform(True, 64, MEAN, STD, seed=0)
        info = None if worker_seed is None else type("Info", (), {"seed": worker_seed, "id": 0})()
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        transform.set_random_seed(seed)
        return transform(image, np.asarray([box], np.float32), np.asarray([1]))

    a, b, other = item(5, None), item(5, 123), item(6, None)
    assert a["scale"] == b["scale"] and torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    assert a["scale"] != other["scale"]
