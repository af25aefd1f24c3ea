"""`predictions.csv`: per-image labels and probabilities of a run's report split, one format for every classifier."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from dinotune.atomic import atomic_path
from dinotune.data.formats import DatasetSpec


def write_predictions(
    path: Path, paths: list[Path], labels: torch.Tensor, probs: torch.Tensor, spec: DatasetSpec
) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "true", "predicted", *[f"p_{c}" for c in spec.classes]])
        for file, label, row in zip(paths, labels, probs, strict=True):
            if spec.multilabel:
                true = ";".join(spec.classes[i] for i in torch.nonzero(label).flatten().tolist())
                pred = ";".join(spec.classes[i] for i in torch.nonzero(row > 0.5).flatten().tolist())
            else:
                true, pred = spec.classes[int(label)], spec.classes[int(row.argmax())]
            writer.writerow([str(file), true, pred, *[f"{p:.6f}" for p in row.tolist()]])
