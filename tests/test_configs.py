"""Every shipped config trains on an RGB ImageFolder and on a grayscale one, with the channels it says:
the general configs read RGB as 3 channels (grayscale files converted), the industrial one 1 channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinotune.config import load_config, read_yaml
from dinotune.model import read_card
from dinotune.verbs.common import Result
from dinotune.verbs.train import train_job
from tests.detection_fixtures import make_shapes_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["backbone.source=random:vit_test16", "data.image_size=32", "data.num_workers=0"]
TRAINING = ["trainer.max_epochs=1", "trainer.progress_bar=false", "batch_size=16"]
EXPECTED_CHANNELS = {"industrial/finetune.yaml": 1}
# The official Mask2Former sizes take a minute per run here; this test checks the config's data and channel
# settings, which do not depend on them (the head's own tests cover the sizes).
SMALL_M2F = ["data.image_size=64"] + [f"head.m2f.{key}" for key in (
    "hidden_dim=32", "num_queries=8", "enc_layers=1", "dec_layers=1", "ffn_dim=64", "heads=4", "adapter_heads=4",
    "adapter_inplanes=16", "loss.points=0")]  # fmt: skip
SHIPPED = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if read_yaml(p).get("task"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _imagefolder(root: Path, mode: str) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (32, 32, 3)) + 120 * label
                Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(folder / f"{i}.png")
    return root


def _masks(root: Path, size: int = 32) -> Path:
    from dinotune.data.bundled import make_segmentation_dataset

    return make_segmentation_dataset(root, 12, size=size)


def _depth(root: Path, mode: str) -> Path:
    from tests.depth.scenes import write_scenes

    write_scenes(root, {"train": 8, "val": 4}, size=32)
    for path in (root / "images").rglob("*.png"):
        Image.open(path).convert(mode).save(path)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("configs")
    return {
        "RGB": _imagefolder(base / "rgb", "RGB"),
        "L": _imagefolder(base / "gray", "L"),
        "seg": _masks(base / "seg"),
        "seg64": _masks(base / "seg64", 64),  # Mask2Former's stride-32 GroupNorm needs at least 2x2 there
        "depth_RGB": _depth(base / "depth_rgb", "RGB"),
        "depth_L": _depth(base / "depth_gray", "L"),
        "boxes": make_shapes_dataset(base / "boxes", 8, 4, 4, size=64),  # detection: COCO-JSON shapes
    }


@pytest.fixture(scope="module")
def teacher(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, runner = train_job("finetune")
    out = tmp_path_factory.mktemp("teacher") / "run"
    cfg = load_config(model, CONFIGS / "finetune.yaml", [f"data.root={folders['RGB']}", f"out={out}", *TINY, *TRAINING])
    return runner(cfg).run_dir


def _overrides(name: str, task: str, data: Path, out: Path, teacher: Path) -> list[str]:
    overrides = [f"data.root={data}", f"out={out}", *TINY]
    if task == "pretrain":
        ssl = ["data.batch_size=8", "crops.global_size=32", "crops.local_size=16", "crops.n_local=1",
               "heads.out_dim=64", "heads.hidden_dim=32", "heads.bottleneck_dim=16", "trainer.max_steps=2"]  # fmt: skip
        return [*overrides[:2], "backbone.source=random:vit_test16", "data.num_workers=0", *ssl]
    if task == "probe":
        return [*overrides, "sweep.epochs=2", "progress=false"]
    if name == "distill.yaml":
        overrides.append(f"distill.teacher={teacher}")
    if name == "segmentation_m2f.yaml":
        overrides += SMALL_M2F
    if task == "detect":  # image_size 64: the coarsest stride (64) needs one position
        return [*overrides, *TRAINING, "data.image_size=64", "head.width=16", "head.tower_convs=1"]
    dense = task in ("segment", "depth")
    return [*overrides, *TRAINING, "inference.mode=whole"] if dense else [*overrides, *TRAINING]


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_trains_on_rgb_and_grayscale(
    name: str, mode: str, folders: dict[str, Path], teacher: Path, tmp_path: Path
) -> None:
    task = read_yaml(CONFIGS / name)["task"]
    data = folders[("seg64" if "m2f" in name else "seg") if task == "segment" else mode]
    data = folders[f"depth_{mode}"] if task == "depth" else data
    data = folders["boxes"] if task == "detect" else data
    model, runner = train_job(task)
    cfg = load_config(model, CONFIGS / name, _overrides(name, task, data, tmp_path / "run", teacher))
    result: Result = runner(cfg)
    if task == "pretrain":
        assert (result.run_dir / "backbone_hf" / "config.json").is_file()
        return
    card = read_card(result.run_dir)
    assert card.preprocessing.channels == EXPECTED_CHANNELS.get(name, 3), card.preprocessing
    assert card.backbone["in_chans"] == EXPECTED_CHANNELS.get(name, 3)
