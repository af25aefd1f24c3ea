"""Run a model over a list of images: logits, probabilities, labels, pooled features and paths.

Everything downstream (metrics, calibration, OOD, plots) works on these arrays, so the model runs once
per split. Images go through the model card's own preprocessing, the same pixels the model saw in
training. A file that cannot be decoded is logged and left out (not replaced by another image, which
would count that image twice).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dinotune.atomic import atomic_path
from dinotune.data.datasets import ClassificationDataset
from dinotune.data.formats import DatasetSpec, Sample, load_dataset
from dinotune.device import autocast
from dinotune.errors import DataError
from dinotune.features.engine import FeatureExtractor
from dinotune.heads.linear import build_input
from dinotune.model import Classifier, ModelCard, model_device

__all__ = [
    "Predictions",
    "batches",
    "load_run_dataset",
    "model_transform",
    "predict",
    "samples_for_model",
    "write_predictions",
]

log = logging.getLogger(__name__)
UNLABELLED = -1


@dataclass
class Predictions:
    """Model outputs over N images. `labels` are (N,) class indices (-1: unlabelled) or (N, C) multi-hot;
    `features` are the head's input (N, D), the pooled backbone features the classifier sees (for an
    ONNX export: the embedding it carries, the normed class token)."""

    logits: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)

    def subset(self, index: np.ndarray) -> Predictions:
        return Predictions(
            self.logits[index],
            self.probs[index],
            self.labels[index],
            self.features[index],
            [self.paths[i] for i in np.asarray(index).tolist()],
        )


def load_run_dataset(run: Path, root: Path, task: str) -> tuple[DatasetSpec, str]:
    """The dataset under `root`, split as the run split it when its splits.json was made for this folder
    (so evaluation never scores training images); (spec, a note for the report)."""
    spec = load_dataset(root, task=task, auto_split=False)
    if set(spec.splits) != {"all"}:
        return spec, ""
    split_file = run / "splits.json"
    try:
        saved = json.loads(split_file.read_text(encoding="utf-8"))
        same = Path(saved["root"]).resolve() == root.resolve()
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if not same:
        count = len(spec.splits["all"])
        return spec, f"{root} has no split folders and no split from this run: all {count} images used."
    spec = load_dataset(
        root,
        task=task,
        split_file=split_file,
        seed=saved.get("seed", 0),
        val_fraction=saved.get("val_fraction", 0.1),
        test_fraction=saved.get("test_fraction", 0.1),
        group_by=saved.get("group_by"),
        volumes=saved.get("volumes", "middle"),
        slice_axis=saved.get("slice_axis"),
    )
    return spec, f"split as recorded in {split_file}."


def samples_for_model(spec: DatasetSpec, split: str, classes: Sequence[str]) -> list[Sample]:
    """The samples of `split` with labels renumbered to the model's class order (matched by name).

    A dataset may hold a subset of the model's classes (or list them in another order); a class the
    model does not know is an error, since no prediction could ever be right for it.
    """
    if split not in spec.splits:
        raise DataError(
            f"{spec.root} has no '{split}' split (found: {', '.join(sorted(spec.splits))}); "
            "pass another one with --split."
        )
    index = {name: i for i, name in enumerate(classes)}
    remap = [index.get(c, UNLABELLED) for c in spec.classes]
    used = {lab for s in spec.splits[split] for lab in (s.label if isinstance(s.label, list) else [s.label])}
    unknown = sorted({spec.classes[i] for i in used if remap[i] == UNLABELLED})
    if unknown:
        raise DataError(
            f"{spec.root}: classes {unknown} are not classes of this model ({list(classes)}); "
            "rename the folders/labels to the model's class names or remove those images."
        )
    out = []
    for s in spec.splits[split]:
        label = [remap[i] for i in s.label] if isinstance(s.label, list) else remap[int(s.label)]
        out.append(Sample(s.path, label))
    return out


def model_transform(model: Classifier, card: ModelCard, corruption: Any = None) -> Callable[..., dict[str, Any]]:
    """The card's eval transform; `corruption` (an albumentations op) runs after resizing, before
    normalisation, so it acts on the [0, 1] pixels at the resolution the model sees."""
    transform = card.preprocessing.transform(model.input_multiple)
    if corruption is None:
        return transform
    import albumentations as A

    from dinotune.data.transforms import Transform

    return Transform(
        A.Compose([transform.pipeline, corruption], seed=0),
        transform.mean,
        transform.std,
        transform.keep_size,
        transform.patch_size,
    )


def batches(
    samples: Sequence[Sample],
    transform: Callable[..., dict[str, Any]],
    card: ModelCard,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "evaluating",
) -> Iterator[dict[str, Any]]:
    """Batches of {"image", "label", "path", "index"}; unreadable files are skipped (logged once)."""
    labelled = [Sample(s.path, UNLABELLED if s.label is None else s.label) for s in samples]
    dataset = ClassificationDataset(
        labelled,
        transform,
        card.preprocessing.channels,
        "skip",
        num_classes=len(card.classes),
        multilabel=card.multilabel,
        scaling=card.preprocessing.scaling_config(),
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    seen: set[int] = set()
    for batch in tqdm(loader, desc=desc, disable=None if progress else True, leave=False):  # None: off if no TTY
        keep = [i for i, idx in enumerate(batch["index"].tolist()) if idx not in seen]
        seen.update(batch["index"].tolist())
        if len(keep) < len(batch["index"]):  # replacements for unreadable files: already counted
            batch = {k: v[keep] if isinstance(v, torch.Tensor) else [v[i] for i in keep] for k, v in batch.items()}
        if keep:
            yield batch


def engine_forward(model: Any, expected_images: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """images -> (logits, the head's input). A PyTorch classifier's backbone runs through the engine embed and
    probe use (features/engine.py: ONNX Runtime where it agrees with eager to 1e-4 and is faster, else eager),
    so evaluate and predict see the features a probe was trained on; the linear head runs in PyTorch.
    Other models (an ONNX export's twin) keep their own forward."""
    if not isinstance(model, Classifier):
        return lambda images: model.logits_and_features(images)
    extractor = FeatureExtractor(model.backbone, model.kinds, expected_images=expected_images)
    device = model_device(model)

    def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = {k: v.to(device) for k, v in extractor(images).items()}
        return model.forward_head(features), build_input(features, model.head.feature_choice)

    return forward


@torch.no_grad()
def predict(
    model: Classifier,
    card: ModelCard,
    samples: Sequence[Sample],
    *,
    batch_size: int = 64,
    corruption: Any = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "evaluating",
) -> Predictions:
    """Run `model` over `samples` (labels already in the model's class order, None if unlabelled)."""
    if not samples:
        raise DataError("there are no images to evaluate (the split is empty).")
    device = model_device(model)
    transform = model_transform(model, card, corruption)
    forward = engine_forward(model, len(samples))
    logits, labels, feats, paths = [], [], [], []
    for batch in batches(
        samples, transform, card, batch_size=batch_size, num_workers=num_workers, progress=progress, desc=desc
    ):
        with autocast(device):
            out, features = forward(batch["image"].to(device))
        logits.append(out.float().cpu())
        feats.append(features.float().cpu())
        labels.append(batch["label"])
        paths.extend(batch["path"])
    if not paths:
        raise DataError(f"none of the {len(samples)} images could be read (first: {samples[0].path}).")
    x = torch.cat(logits)
    probs = torch.sigmoid(x) if card.multilabel else x.softmax(1)
    return Predictions(
        x.numpy(), probs.numpy(), torch.cat(labels).numpy(), torch.cat(feats).numpy(), [str(Path(p)) for p in paths]
    )


def write_predictions(path: Path, paths: Sequence[str | Path], labels: Any, probs: Any, classes: Sequence[str],
                      multilabel: bool) -> None:  # fmt: skip
    """`predictions.csv`: file, true label(s), predicted label(s), one probability per class; the one format of a
    run's report split and of every evaluated dataset. Labels are class indices (-1: unlabelled) or multi-hot."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "true", "predicted", *[f"p_{c}" for c in classes]])
        for i, file in enumerate(paths):
            if multilabel:
                true = ";".join(classes[j] for j in np.flatnonzero(labels[i] > 0))
                guess = ";".join(classes[j] for j in np.flatnonzero(probs[i] > 0.5))
            else:
                label = int(labels[i])
                true, guess = classes[label] if label >= 0 else "", classes[int(probs[i].argmax())]
            writer.writerow([str(file), true, guess, *[f"{p:.6f}" for p in probs[i].tolist()]])
