"""Multi-label predict: the decision threshold is chosen on validation at training time, stored in the card,
used by default and overridable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinotune.config import validate
from dinotune.metrics import best_threshold
from dinotune.model import read_card
from dinotune.verbs.predict import predict
from dinotune.verbs.probe import ProbeConfig, run_probe


def test_best_threshold_maximises_micro_f1_with_ties_to_one_half() -> None:
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]])
    assert best_threshold(torch.tensor([[0.3, 0.1], [0.2, 0.35], [0.32, 0.4]]), targets) == 0.25
    assert best_threshold(torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.9, 0.9]]), targets) == 0.5  # all of 0.1-0.85 tie


@pytest.fixture(scope="module")
def multilabel_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images with a red and/or a blue half; labels 'red', 'blue' or both, in a CSV (split here)."""
    root = tmp_path_factory.mktemp("colours")
    rng, lines = np.random.default_rng(0), ["path,label"]
    for i in range(60):
        red, blue = [(True, False), (False, True), (True, True)][i % 3]
        pixels = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        pixels[:16, :, 0] += 180 * red
        pixels[16:, :, 2] += 180 * blue
        Image.fromarray(pixels).save(root / f"{i}.png")
        lines.append(f"{i}.png," + ";".join(name for name, on in (("red", red), ("blue", blue)) if on))
    (root / "labels.csv").write_text("\n".join(lines))
    cfg = validate(ProbeConfig, {"data": {"root": str(root / "labels.csv"), "image_size": 32, "num_workers": 0},
                                 "backbone": {"source": "random:vit_test16"}, "out": str(root / "run"),
                                 "cache_dir": str(root / "cache"), "progress": False, "sweep": {"epochs": 20},
                                 "knn": {"enabled": False}})  # fmt: skip
    return run_probe(cfg).run_dir


def test_the_threshold_is_chosen_on_val_stored_in_the_card_and_used_by_predict(multilabel_probe: Path) -> None:
    card = read_card(multilabel_probe)
    threshold = card.inference["threshold"]
    assert 0.05 <= threshold <= 0.95
    images = sorted(multilabel_probe.parent.glob("*.png"))[:12]
    default = predict(multilabel_probe, images)
    for p in default:
        probs = dict(p.top)
        assert p.label == (";".join(c for c in card.classes if probs[c] > threshold) or "-")
    assert {p.label for p in predict(multilabel_probe, images, threshold=0.0)} == {";".join(card.classes)}
    assert {p.label for p in predict(multilabel_probe, images, threshold=1.0)} == {"-"}
