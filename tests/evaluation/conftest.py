"""A tiny real model folder and dataset: random:vit_test16 at 32 px, a few digits per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinotune import load_backbone
from dinotune.data.preprocessing import Preprocessing
from dinotune.heads.linear import LinearHead
from dinotune.model import Classifier, ModelCard, save_model

PER_SPLIT = {"train": 6, "val": 3, "test": 4}
_ENDS = {"train": 6, "val": 9, "test": 13}  # cumulative counts per class


@pytest.fixture(scope="session")
def small_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes x (6 train, 3 val, 4 test) real digit images (scikit-learn's 8x8 digits at 32 px)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits") / "small"
    taken: dict[int, int] = {}
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        n = taken.get(int(label), 0)
        split = next((name for name, end in _ENDS.items() if n < end), None)
        if split is None:
            continue
        taken[int(label)] = n + 1
        folder = root / split / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray((image * (255.0 / 16.0)).astype(np.uint8))
        pil.resize((32, 32), Image.BILINEAR).save(folder / f"digit_{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def noise_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ood")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"noise_{i}.png")
    return folder


def make_model_folder(folder: Path, classes: list[str], seed: int = 0) -> Path:
    """A deployable model folder: random test backbone + a random linear head on the class token."""
    backbone = load_backbone("random:vit_test16", device="cpu")
    generator = torch.Generator().manual_seed(seed)
    dim = backbone.embed_dim
    head = LinearHead(
        torch.randn(len(classes), dim, generator=generator),
        torch.zeros(len(classes)),
        torch.zeros(dim),
        torch.ones(dim),
        feature_choice="cls",
    )
    info = backbone.info
    card = ModelCard(
        task="classify",
        classes=classes,
        preprocessing=Preprocessing(image_size=32, mean=info.mean, std=info.std),
        backbone={"source": info.source, "arch": info.arch, "in_chans": 3, "seed": 0, "identity": info.identity},
        head={},
        license=info.license,
    )
    return save_model(folder, Classifier(backbone, head).eval(), card)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_model_folder(tmp_path_factory.mktemp("run") / "run", [str(i) for i in range(10)])
    log = folder / "logs" / "version_0"
    log.mkdir(parents=True)
    (log / "metrics.csv").write_text(
        "epoch,step,train_loss,val_loss,val_accuracy\n"
        "0,9,2.1,,\n0,9,,1.9,0.40\n1,19,1.5,,\n1,19,,1.4,0.62\n2,29,1.1,,\n2,29,,1.2,0.71\n"
    )
    return folder
