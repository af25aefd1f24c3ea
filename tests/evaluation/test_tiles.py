"""Large rasters: block-wise segmentation of a GeoTIFF keeps its CRS and transform; tiles carry coordinates."""

from __future__ import annotations

import csv
import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dinotune import load_backbone
from dinotune.data.preprocessing import Preprocessing
from dinotune.data.raster import open_scene
from dinotune.evaluation.segment import predict_masks
from dinotune.evaluation.tiles import classify_scene, segment_scene, tile_boxes
from dinotune.heads.linear import LinearHead
from dinotune.heads.segment import HeadConfig
from dinotune.model import Classifier, ModelCard, load_model, save_model
from dinotune.model.inference import InferenceConfig, default_colours, predict_probs
from dinotune.model.segmenter import build_segmenter

# rasterio is a dev dependency: CI must run these tests, a bare checkout may skip them
rasterio = importlib.import_module("rasterio") if os.environ.get("CI") == "true" else pytest.importorskip("rasterio")
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
UTM = CRS.from_epsg(32633)
TRANSFORM = from_origin(500000.0, 4650000.0, 10.0, 10.0)


def _backbone_card(in_chans: int = 3) -> tuple[object, dict]:
    torch.manual_seed(0)
    backbone = load_backbone("random:vit_test16", in_chans=in_chans, device="cpu", seed=0)
    info = backbone.info
    spec = {"source": info.source, "arch": info.arch, "in_chans": info.in_chans, "seed": 0, "identity": info.identity}
    return backbone, spec


def make_segmenter(folder: Path, in_chans: int = 3) -> Path:
    """A 3-class segmenter folder (random tiny ViT, random linear head): what predict and serve load."""
    backbone, spec = _backbone_card(in_chans)
    head = HeadConfig(type="linear")
    model = build_segmenter(backbone, head, 3).eval()
    prep = Preprocessing(64, channels=in_chans, mean=MEAN[:1] * in_chans, std=STD[:1] * in_chans)
    inference = InferenceConfig(crop=256, stride=256, window_batch=8).model_dump()
    card = ModelCard("segment", ["a", "b", "c"], prep, spec, {"type": "linear", "config": head.model_dump()},
                     colours=default_colours(3), inference=inference)  # fmt: skip
    return save_model(folder, model, card)


def make_classifier(folder: Path) -> Path:
    """A 2-class classifier folder (random tiny ViT, random linear head on the class token)."""
    backbone, spec = _backbone_card()
    generator = torch.Generator().manual_seed(1)
    dim = backbone.embed_dim
    head = LinearHead(torch.randn(2, dim, generator=generator), torch.zeros(2), torch.zeros(dim), torch.ones(dim),
                      feature_choice="cls")  # fmt: skip
    prep = Preprocessing(32, channels=3, mean=MEAN, std=STD)
    card = ModelCard("classify", ["field", "water"], prep, spec, {})
    return save_model(folder, Classifier(backbone, head), card)


@pytest.fixture(scope="module")
def segmenter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_segmenter(tmp_path_factory.mktemp("models") / "seg")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classifier(tmp_path_factory.mktemp("models") / "cls")


def _geotiff(path: Path, height: int, width: int, bands: int = 3, dtype: str = "uint8") -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (bands, height, width)).astype(dtype)
    data[:, : height // 2] //= 4  # a dark upper half, so the classes are not uniform noise
    profile = {"driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": dtype,
               "crs": UTM, "transform": TRANSFORM, "tiled": True}  # fmt: skip
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    return path


def test_tiled_segmentation_of_a_2048_geotiff_writes_a_geotiff_mask_with_its_crs_and_transform(
    segmenter_dir: Path, tmp_path: Path
) -> None:
    scene = _geotiff(tmp_path / "scene.tif", 2048, 2048)
    (mask_path,) = predict_masks(segmenter_dir, [scene], tmp_path / "out", device="cpu", block=1024)
    assert mask_path == tmp_path / "out" / "masks" / "scene.tif"
    with rasterio.open(scene) as src, rasterio.open(mask_path) as mask:
        assert mask.crs == src.crs == UTM
        assert mask.transform == src.transform == TRANSFORM
        assert (mask.height, mask.width, mask.count) == (2048, 2048, 1)
        values = mask.read(1)
        assert mask.colormap(1)[1][:3] == tuple(default_colours(3)[1])
    assert set(np.unique(values).tolist()) <= {0, 1, 2}
    assert not (tmp_path / "out" / "overlays").exists()  # a scene larger than a block gets no overlay


def test_blocks_stitch_to_the_whole_image_prediction(segmenter_dir: Path, tmp_path: Path) -> None:
    """Blocks read with the whole-scene windows that overlap them give the whole-image pass's mask, seams included."""
    model, card = load_model(segmenter_dir, "cpu")
    path = _geotiff(tmp_path / "small.tif", 300, 420)
    cfg = InferenceConfig(crop=64, stride=48)
    with open_scene(path, 3) as scene:
        tiled = segment_scene(model, card, scene, cfg, block=128)  # 3 x 4 blocks
        whole = segment_scene(model, card, scene, cfg, block=1024)
        image = scene.read(0, 0, 300, 420)
    x = torch.from_numpy(((image - np.array(MEAN)) / np.array(STD)).astype(np.float32).transpose(2, 0, 1))[None]
    reference = predict_probs(model, x, 3, cfg).argmax(1)[0].numpy()
    assert np.array_equal(whole, reference)
    assert (tiled == whole).mean() > 0.999  # equal up to float summation order on near-ties


def test_a_float_scene_is_scaled_once_for_the_whole_scene(tmp_path: Path) -> None:
    """Per-image stretching window by window would give every tile its own contrast: it is measured once."""
    path = tmp_path / "counts.tif"
    data = np.linspace(0, 5000, 512 * 512, dtype=np.float32).reshape(1, 512, 512)
    profile = {"driver": "GTiff", "height": 512, "width": 512, "count": 1, "dtype": "float32", "crs": UTM,
               "transform": TRANSFORM}  # fmt: skip
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    with open_scene(path, 1) as scene:
        top, bottom = scene.read(0, 0, 64, 64), scene.read(448, 0, 64, 64)
    assert top.max() < 0.15 and bottom.min() > 0.85  # not each stretched to 0..1
    assert np.allclose(bottom[..., 0], data[0, 448:, :64] / 5000.0, atol=1e-5)  # the whole scene's stretch


def test_tile_classification_gives_pixel_boxes_and_map_coordinates(classifier_dir: Path, tmp_path: Path) -> None:
    model, card = load_model(classifier_dir, "cpu")
    path = _geotiff(tmp_path / "scene.tif", 200, 300)
    with open_scene(path, 3) as scene:
        tiles = classify_scene(model, card, scene, tile=64, stride=64)
    assert tiles.boxes == tile_boxes(200, 300, 64, 64) and len(tiles.boxes) == 4 * 5
    assert tiles.boxes[-1] == (136, 236, 64, 64)  # the last tile ends at the border
    x, y = tiles.centre(1)
    assert (x, y) == (500000.0 + 10 * (64 + 32), 4650000.0 - 10 * 32)
    with open_scene(path, 3) as scene:
        crop = scene.read(0, 64, 64, 64)
    alone = model.predict_proba(card.preprocessing.transform(model.input_multiple)(crop)["image"][None])[0]
    assert np.allclose(tiles.probs[1], alone.numpy(), atol=1e-5)
    assert tiles.embeddings[0].shape == (64,)


def test_predict_tile_writes_csv_with_coordinates_and_a_georeferenced_sidecar(
    classifier_dir: Path, tmp_path: Path
) -> None:
    from dinotune.verbs.predict import run_predict

    path = _geotiff(tmp_path / "scene.tif", 128, 192)
    result, _ = run_predict(classifier_dir, [path], out=tmp_path / "tiles", tile=64, embeddings=True)
    rows = list(csv.DictReader((tmp_path / "tiles" / "scene.csv").read_text().splitlines()))
    assert len(rows) == 2 * 3 and result.metrics == {"scenes": 1, "tiles": 6}
    assert float(rows[0]["x"]) == 500320.0 and float(rows[0]["y"]) == 4649680.0
    assert rows[0]["predicted"] in ("field", "water") and "e_63" in rows[0]
    meta = json.loads((tmp_path / "tiles" / "scene.json").read_text())
    assert CRS.from_wkt(meta["crs"]) == UTM and meta["transform"][:3] == [10.0, 0.0, 500000.0]
