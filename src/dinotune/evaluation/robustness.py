"""Robustness: accuracy under common corruptions (5 severities each) and under FGSM / PGD attacks.

Corruptions follow ImageNet-C (Hendrycks & Dietterich, 2019) in spirit, built from albumentations ops
and applied to the [0, 1] pixels after resizing, i.e. at the resolution the model sees. Blur sigma is
given as a fraction of the image side so a severity means the same at 32 px and at 518 px. Results are
reported as accuracy and as accuracy relative to clean accuracy (1.0 = unaffected).

Adversarial epsilon is in *normalised-pixel* space: the L-inf radius on the tensor the backbone gets,
after (x - mean) / std. With ImageNet statistics (std ~ 0.226) epsilon 0.035 is about 2/255 in raw
pixels. Adversarial images are also clipped to the range of valid pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotune.data.formats import Sample
from dinotune.evaluation.predict import batches, model_transform, predict
from dinotune.model import Classifier, ModelCard

__all__ = [
    "DEFAULT_CORRUPTIONS",
    "DEFAULT_EPSILON",
    "Corruption",
    "adversarial_accuracy",
    "corruption_table",
    "fgsm",
    "pgd",
    "run_corruptions",
]

DEFAULT_EPSILON = 0.035


@dataclass(frozen=True)
class Corruption:
    """One corruption: its parameter at severities 1..5 and how to build the albumentations op
    `build(parameter, image_side)`. `rgb_or_grey_only`: the op needs 1 or 3 channels (JPEG, contrast)."""

    name: str
    parameter: str
    levels: tuple[float, ...]
    build: Callable[[float, int], A.BasicTransform] = field(compare=False)
    rgb_or_grey_only: bool = False

    def op(self, severity: int, image_side: int) -> A.BasicTransform:
        return self.build(self.levels[severity - 1], image_side)


DEFAULT_CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption(
        "Gaussian noise", "std", (0.08, 0.12, 0.18, 0.26, 0.38), lambda v, _: A.GaussNoise(std_range=(v, v), p=1.0)
    ),
    Corruption(
        "Gaussian blur",
        "sigma / side",
        (1 / 224, 2 / 224, 3 / 224, 4 / 224, 6 / 224),
        lambda v, side: A.GaussianBlur(blur_limit=0, sigma_limit=(v * side, v * side), p=1.0),
    ),
    Corruption(
        "brightness",
        "+ value",
        (0.1, 0.2, 0.3, 0.4, 0.5),
        lambda v, _: A.RandomBrightnessContrast(brightness_limit=(v, v), contrast_limit=(0, 0), p=1.0),
    ),
    Corruption(
        "contrast",
        "factor",
        (0.4, 0.3, 0.2, 0.1, 0.05),
        lambda v, _: A.ColorJitter(brightness=(1, 1), contrast=(v, v), saturation=(1, 1), hue=(0, 0), p=1.0),
        rgb_or_grey_only=True,
    ),
    Corruption(
        "JPEG compression",
        "quality",
        (25, 18, 15, 10, 7),
        lambda v, _: A.ImageCompression(quality_range=(int(v), int(v)), p=1.0),
        rgb_or_grey_only=True,
    ),
    Corruption(
        "pixelate",
        "scale",
        (0.6, 0.5, 0.4, 0.3, 0.25),
        lambda v, _: A.Downscale(
            scale_range=(v, v), p=1.0, interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST}
        ),
    ),
)


def corruption_table(
    clean_accuracy: float,
    accuracies: Mapping[tuple[str, int], float],
    corruptions: Sequence[Corruption] = DEFAULT_CORRUPTIONS,
) -> list[dict[str, Any]]:
    """Rows {corruption, severity, parameter, value, accuracy, relative} with relative = accuracy / clean."""
    rows = []
    for c in corruptions:
        for severity in range(1, len(c.levels) + 1):
            if (c.name, severity) not in accuracies:
                continue
            acc = float(accuracies[(c.name, severity)])
            rows.append(
                {
                    "corruption": c.name,
                    "severity": severity,
                    "parameter": c.parameter,
                    "value": c.levels[severity - 1],
                    "accuracy": acc,
                    "relative": acc / clean_accuracy if clean_accuracy > 0 else None,
                }
            )
    return rows


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def run_corruptions(
    model: Classifier,
    card: ModelCard,
    samples: Sequence[Sample],
    *,
    corruptions: Sequence[Corruption] = DEFAULT_CORRUPTIONS,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of a single-label model on clean and corrupted copies of `samples`.

    Returns {"clean_accuracy", "num_samples", "rows" (see `corruption_table`), "skipped": [names]};
    corruptions that cannot handle the image's channel count are listed in "skipped".
    """
    clean = predict(model, card, samples, batch_size=batch_size, progress=False)
    clean_acc = _accuracy(clean.probs, clean.labels)
    side = card.preprocessing.image_size
    accuracies, skipped = {}, []
    usable = [c for c in corruptions if not (c.rgb_or_grey_only and card.preprocessing.channels not in (1, 3))]
    skipped = [c.name for c in corruptions if c not in usable]
    for c in usable:
        for severity in severities:
            out = predict(
                model,
                card,
                samples,
                batch_size=batch_size,
                corruption=c.op(severity, side),
                progress=progress,
                desc=f"{c.name} {severity}",
            )
            accuracies[(c.name, severity)] = _accuracy(out.probs, out.labels)
    return {
        "clean_accuracy": clean_acc,
        "num_samples": len(clean),
        "rows": corruption_table(clean_acc, accuracies, usable),
        "skipped": skipped,
    }


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of the mean cross-entropy w.r.t. the input only (parameters are left untouched)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad, loss.detach()


def fgsm(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    low: Tensor | float = -np.inf,
    high: Tensor | float = np.inf,
) -> Tensor:
    """Fast gradient sign method (Goodfellow et al., 2015): x + epsilon * sign(grad_x loss), clipped."""
    grad, _ = _input_grad(model, images, labels)
    return torch.clamp(images + epsilon * grad.sign(), low, high).detach()


def pgd(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    low: Tensor | float = -np.inf,
    high: Tensor | float = np.inf,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent (Madry et al., 2018) in the L-inf ball of radius `epsilon`.

    Step size defaults to 2.5 * epsilon / steps; a uniform random start (seeded by `generator`) makes
    the attack stronger than FGSM. With steps=1, step_size=epsilon and no random start it is FGSM.
    """
    step = 2.5 * epsilon / steps if step_size is None else step_size
    x = images.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        x = torch.clamp(x + epsilon * noise, low, high)
    for _ in range(steps):
        grad, _ = _input_grad(model, x, labels)
        x = x + step * grad.sign()
        x = torch.clamp(torch.min(torch.max(x, images - epsilon), images + epsilon), low, high).detach()
    return x


def adversarial_accuracy(
    model: Classifier,
    card: ModelCard,
    samples: Sequence[Sample],
    *,
    epsilon: float = DEFAULT_EPSILON,
    pgd_steps: int = 10,
    batch_size: int = 32,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Clean, FGSM and PGD accuracy of a single-label model at L-inf radius `epsilon` (normalised space)."""
    device = next(model.parameters()).device
    mean = torch.tensor(model_transform(model, card).mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(model_transform(model, card).std, device=device).view(1, -1, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    generator = torch.Generator().manual_seed(seed)
    correct = {"clean": 0, "fgsm": 0, "pgd": 0}
    total = 0
    for batch in batches(
        samples, model_transform(model, card), card, batch_size=batch_size, progress=progress, desc="adversarial"
    ):
        x, y = batch["image"].to(device), batch["label"].to(device)
        attacked = {
            "clean": x,
            "fgsm": fgsm(model, x, y, epsilon, low, high),
            "pgd": pgd(model, x, y, epsilon, steps=pgd_steps, low=low, high=high, generator=generator),
        }
        with torch.no_grad():
            for name, images in attacked.items():
                correct[name] += int((model(images).argmax(1) == y).sum())
        total += len(y)
    return {
        "epsilon": epsilon,
        "space": "normalised pixels",
        "pgd_steps": pgd_steps,
        "num_samples": total,
        "epsilon_raw_pixels": [epsilon * float(s) for s in std.flatten().tolist()],
        **{f"{k}_accuracy": v / max(total, 1) for k, v in correct.items()},
    }
