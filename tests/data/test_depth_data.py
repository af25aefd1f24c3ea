"""Depth data: decoding with the scale, invalid pixels, augmentations that keep depth right, the layout
and `data check` on it (one line per problem naming the file and the fix)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from dinotune.cli_data import data_app
from dinotune.data.config import DataConfig
from dinotune.data.depth import DepthDataset, clean_depth, depth_transform, load_depth_dataset, read_depth, valid_depth
from dinotune.data.spec import Sample
from dinotune.errors import DataError
from tests.depth.scenes import write_scenes

runner = CliRunner()


def test_png_scale_float_tiff_and_invalid_pixels(tmp_path) -> None:
    Image.fromarray(np.array([[0, 1500], [65535, 250]], np.uint16)).save(tmp_path / "d.png")
    metres = read_depth(tmp_path / "d.png", scale=0.001)
    assert metres.dtype == np.float32 and np.allclose(metres, [[0.0, 1.5], [65.535, 0.25]])
    assert read_depth(tmp_path / "d.png", scale=1 / 256)[0, 1] == pytest.approx(1500 / 256)  # KITTI's scale
    tifffile.imwrite(tmp_path / "d.tif", np.array([[np.nan, 2.0], [np.inf, -1.0]], np.float32))
    raw = read_depth(tmp_path / "d.tif")
    assert valid_depth(raw, 0.001, 10.0).tolist() == [[False, True], [False, False]]
    assert valid_depth(metres, 0.001, 10.0).tolist() == [[False, True], [False, True]]  # 0 and > max: invalid
    assert clean_depth(raw, 0.001, 10.0).tolist() == [[0.0, 2.0], [0.0, 0.0]]
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png: a depth map has one channel"):
        read_depth(tmp_path / "rgb.png")


def test_augmentations_move_depth_with_the_image_and_never_blend_it() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (32, 48, 3)).astype(np.float32)  # shorter side = image_size: crops and flips only
    depth = np.where(rng.uniform(size=(32, 48)) > 0.2, rng.choice([1.0, 3.0, 7.0], (32, 48)), 0.0).astype(np.float32)
    image[..., 0] = 0.3 + depth / 40  # red encodes depth, so alignment can be read back (and nothing clips)
    cfg = DataConfig(root=".", image_size=32, augment="default")
    transform = depth_transform(cfg, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=True)
    flipped = 0
    for _ in range(20):
        out = transform(image, depth)
        d = out["depth"].numpy()
        assert d.shape == (32, 32) and set(np.unique(d)) <= {0.0, 1.0, 3.0, 7.0}  # nearest: no made-up depths
        red = out["image"][0].numpy()
        # brightness/contrast changes the image only: red stays an affine function of depth
        slope = np.polyfit(d.ravel(), red.ravel(), 1)
        assert np.abs(np.polyval(slope, d) - red).max() < 1e-5
        flipped += int(not np.array_equal(d, transform(image, depth)["depth"].numpy()))
    assert flipped  # random crops / flips happen


def test_layout_pairs_and_dataset(tmp_path) -> None:
    root = write_scenes(tmp_path / "s", {"train": 4, "val": 2}, size=32)
    spec = load_depth_dataset(root)
    assert spec.task == "depth" and {k: len(v) for k, v in spec.splits.items()} == {"train": 4, "val": 2}
    cfg = DataConfig(root=root, image_size=32, augment="none")
    data = DepthDataset(spec.splits["train"], depth_transform(cfg, (0.5,) * 3, (0.2,) * 3, train=False))
    item = data[0]  # scene_0 has a hole: 0 in the tensor
    assert item["image"].shape == (3, 32, 32) and item["depth"].shape == (32, 32) and float(item["depth"].min()) == 0
    bad = Sample(spec.splits["train"][0].path, spec.splits["val"][0].label)
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(spec.splits["val"][0].label)
    with pytest.raises(DataError, match=r"depth map is 8x8 but its image scene_0\.png is 32x32; save depth at"):
        DepthDataset([bad], data.transform)[0]


def test_data_check_names_every_depth_problem(tmp_path) -> None:
    root = write_scenes(tmp_path / "s", {"train": 6}, size=32, holes=False)
    depth = root / "depth" / "train"
    (depth / "scene_0.png").unlink()  # image without depth
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "images" / "train" / "extra.png")
    Image.fromarray(np.full((32, 32), 2000, np.uint16)).save(depth / "lonely.png")  # depth without image
    Image.fromarray(np.full((16, 32), 2000, np.uint16)).save(depth / "scene_1.png")  # size
    Image.fromarray(np.zeros((32, 32), np.uint16)).save(depth / "scene_2.png")  # all invalid
    Image.fromarray(np.full((32, 32), 20, np.uint8)).save(depth / "scene_3.png")  # 8-bit
    result = runner.invoke(data_app, ["check", str(root)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()

    def line(code: str, name: str) -> str:
        found = [x for x in lines if f"[{code}]" in x and name in x]
        assert len(found) == 1, (code, name, result.output)
        return found[0]

    assert "add scene_0.png (or .tif) under depth/" in line("image_without_depth", "images/train/scene_0.png")
    assert "extra.png" in line("image_without_depth", "images/train/extra.png")
    assert "add the image of the same name under images/" in line("depth_without_image", "depth/train/lonely.png")
    assert "32x16 but its image is 32x32: depth/train/scene_1.png; save depth at" in line("depth_size", "scene_1")
    assert "depth/train/scene_2.png; check data.depth_scale" in line("depth_all_invalid", "scene_2")
    assert "uint8" in line("depth_dtype", "scene_3") and "16-bit PNG" in line("depth_dtype", "scene_3")
    assert "scene_4.png" not in result.output and "scene_5.png" not in result.output  # good pairs: silent
    assert "layout depth, task depth" in lines[0]
