"""Corruption table and attacks, checked against independent computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinotune.data.decode import read_image
from dinotune.data.formats import load_dataset
from dinotune.evaluation.predict import samples_for_model
from dinotune.evaluation.robustness import (
    DEFAULT_CORRUPTIONS,
    adversarial_accuracy,
    corruption_table,
    fgsm,
    pgd,
    run_corruptions,
)
from dinotune.model import load_model


def test_corruption_table_relative_is_accuracy_over_clean() -> None:
    accuracies = {("Gaussian noise", 1): 0.6, ("Gaussian noise", 2): 0.3, ("pixelate", 5): 0.0}
    rows = corruption_table(0.75, accuracies)
    assert [(r["corruption"], r["severity"]) for r in rows] == list(accuracies)
    assert [r["relative"] for r in rows] == pytest.approx([0.8, 0.4, 0.0])
    assert rows[1]["value"] == DEFAULT_CORRUPTIONS[0].levels[1]
    assert corruption_table(0.0, accuracies)[0]["relative"] is None


def _accuracy_by_hand(model, card, samples, op=None) -> float:
    """Decode, resize/crop, corrupt, normalise and classify each image on its own (no evaluation code)."""
    transform = card.preprocessing.transform(model.backbone.input_multiple)
    inputs = []
    for s in samples:
        image = transform.pipeline(image=read_image(s.path, 3))["image"]
        if op is not None:
            image = op(image=image)["image"]
        inputs.append(torch.from_numpy(((image - transform.mean) / transform.std).transpose(2, 0, 1).copy()))
    with torch.no_grad():
        predicted = model(torch.stack(inputs)).argmax(1)
    return float((predicted == torch.tensor([s.label for s in samples])).float().mean())


def test_run_corruptions_matches_accuracy_computed_by_hand(model_dir: Path, small_digits: Path) -> None:
    model, card = load_model(model_dir, device="cpu")
    samples = samples_for_model(load_dataset(small_digits), "test", card.classes)
    chosen = [c for c in DEFAULT_CORRUPTIONS if c.name in ("Gaussian blur", "pixelate", "contrast")]
    result = run_corruptions(model, card, samples, corruptions=chosen, severities=(2, 5), progress=False)
    clean = _accuracy_by_hand(model, card, samples)
    assert result["clean_accuracy"] == pytest.approx(clean)
    assert len(result["rows"]) == 6
    for row in result["rows"]:
        corruption = next(c for c in chosen if c.name == row["corruption"])
        acc = _accuracy_by_hand(model, card, samples, corruption.op(row["severity"], card.preprocessing.image_size))
        assert row["accuracy"] == pytest.approx(acc)
        assert row["relative"] == pytest.approx(acc / clean)


class _Linear(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w  # (C, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


def test_fgsm_moves_along_the_gradient_sign_by_hand() -> None:
    # two classes, logits (0, w.x), label 0: d loss / dx = sigmoid(w.x) * w, so the step is eps * sign(w)
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.5, -0.1]])
    x = torch.zeros(1, 1, 2, 2)
    adv = fgsm(_Linear(w), x, torch.tensor([0]), epsilon=0.1)
    torch.testing.assert_close(adv.flatten(), 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0]))
    clipped = fgsm(_Linear(w), x, torch.tensor([0]), epsilon=0.1, low=-0.05, high=0.05)
    assert clipped.abs().max() == pytest.approx(0.05)


def test_pgd_stays_in_the_ball_and_beats_fgsm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.rand(32, 3, 2, 2) * 2 - 1, torch.randint(0, 3, (32,))  # inside [-2, 2]
    eps = 0.3
    one_step = pgd(model, x, y, eps, steps=1, step_size=eps, random_start=False)
    torch.testing.assert_close(one_step, fgsm(model, x, y, eps))
    adv = pgd(model, x, y, eps, steps=20, low=-2.0, high=2.0, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= -2.0 and adv.max() <= 2.0
    with torch.no_grad():
        losses = [F.cross_entropy(model(v), y).item() for v in (x, fgsm(model, x, y, eps), adv)]
    assert losses[0] < losses[1] <= losses[2] + 1e-4


def test_adversarial_accuracy_reports_the_attack(model_dir: Path, small_digits: Path) -> None:
    model, card = load_model(model_dir, device="cpu")
    samples = samples_for_model(load_dataset(small_digits), "test", card.classes)[:12]
    out = adversarial_accuracy(model, card, samples, epsilon=0.5, pgd_steps=3, progress=False)
    assert out["num_samples"] == 12
    assert out["clean_accuracy"] == pytest.approx(_accuracy_by_hand(model, card, samples))
    assert out["pgd_accuracy"] <= out["clean_accuracy"]
    np.testing.assert_allclose(out["epsilon_raw_pixels"], 0.5 * np.asarray(card.preprocessing.std), rtol=1e-6)
