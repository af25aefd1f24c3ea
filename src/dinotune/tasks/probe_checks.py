"""Checks of a probe sweep's inputs and settings, all made before any work, each one line with the fix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dinotune.errors import ConfigError, DataError
from dinotune.heads.linear import DEFAULT_FEATURE_CHOICES, available_feature_choices, parse_feature_choice
from dinotune.tasks.head_bank import FeatureSet


def _check_split(split: FeatureSet, name: str, kinds: Sequence[str], multilabel: bool) -> None:
    n = len(split)
    if n == 0:
        raise DataError(f"The {name} split is empty.")
    for k in kinds:
        if k not in split.features:
            raise DataError(
                f"The {name} split has no {k!r} features (available: {sorted(split.features)}); "
                "extract them or drop the feature choices that need them."
            )
        x = split.features[k]
        if x.ndim != 2 or x.shape[0] != n:
            raise DataError(
                f"{name} features {k!r} have shape {tuple(x.shape)}; expected ({n}, D) to match {n} labels."
            )
        if not torch.isfinite(x).all():
            raise DataError(f"{name} features {k!r} contain NaN or inf; re-extract them.")
    y = split.labels
    if multilabel and (y.ndim != 2 or ((y != 0) & (y != 1)).any()):
        raise DataError(f"{name} labels must be an (N, C) multi-hot 0/1 matrix when multilabel=True.")
    if not multilabel and (y.ndim != 1 or y.is_floating_point()):
        hint = " (set multilabel=True for multi-hot labels)" if y.ndim == 2 else ""
        raise DataError(f"{name} labels must be a 1-D integer class-index tensor{hint}.")


def _num_classes(splits: Sequence[FeatureSet], multilabel: bool, num_classes: int | None) -> int:
    if multilabel:
        c = splits[0].labels.shape[1]
        if any(s.labels.shape[1] != c for s in splits):
            raise DataError("All splits' multi-hot label matrices must have the same number of columns.")
        return c
    lo = min(int(s.labels.min()) for s in splits)
    hi = max(int(s.labels.max()) for s in splits)
    c = hi + 1 if num_classes is None else num_classes
    if lo < 0 or hi >= c:
        raise DataError(f"Labels must be class indices in [0, {c - 1}]; found values in [{lo}, {hi}].")
    return c


def _check_grid(lrs: Sequence[float], weight_decays: Sequence[float], epochs: int, batch_size: int) -> None:
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise ConfigError(f"`lrs` must be a non-empty list of positive learning rates, got {list(lrs)}.")
    if not weight_decays or any(not (wd >= 0 and math.isfinite(wd)) for wd in weight_decays):
        raise ConfigError(f"`weight_decays` must be a non-empty list of values >= 0, got {list(weight_decays)}.")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"`epochs` and `batch_size` must be >= 1, got {epochs} and {batch_size}.")


def check_sweep(
    train: FeatureSet, val: FeatureSet, test: FeatureSet | None, s: Any
) -> tuple[list[str], dict[str, tuple[str, ...]], int, Tensor | None]:
    """Every setting (`s`: a SweepSettings) checked before any work: (choices, their kinds, classes, weights)."""
    _check_grid(s.lrs, s.weight_decays, s.epochs, s.batch_size)
    if not s.methods or set(s.methods) - {"sgd", "lbfgs"}:
        raise ConfigError(f"`methods` must name one or both of sgd, lbfgs; got {list(s.methods)}.")
    if not s.cs or any(not (c > 0 and math.isfinite(c)) for c in s.cs):
        raise ConfigError(f"`cs` must be a non-empty list of positive regularisation values C, got {list(s.cs)}.")
    if not 0.0 <= s.label_smoothing < 1.0:
        raise ConfigError(f"`label_smoothing` must be in [0, 1), got {s.label_smoothing}.")
    if s.eval_every < 1 or (s.patience is not None and s.patience < 1):
        raise ConfigError("`eval_every` must be >= 1 and `patience` >= 1 (or None to disable early stopping).")
    choices = list(s.feature_choices) if s.feature_choices is not None else available_feature_choices(train.features)
    if not choices:
        raise DataError(
            f"No feature choice can be built from the train features {sorted(train.features)}; "
            f"the defaults need {', '.join(DEFAULT_FEATURE_CHOICES)}."
        )
    choice_kinds = {c: parse_feature_choice(c) for c in choices}
    kinds = list(dict.fromkeys(k for ks in choice_kinds.values() for k in ks))
    splits = [s for s in (train, val, test) if s is not None]
    for split, name in zip(splits, ("train", "val", "test"), strict=False):
        _check_split(split, name, kinds, s.multilabel)
    n = _num_classes(splits, s.multilabel, s.num_classes)
    return choices, choice_kinds, n, _check_class_weights(s.class_weights, n)


def _check_class_weights(class_weights: Tensor | None, num_classes: int) -> Tensor | None:
    if class_weights is None:
        return None
    cw = torch.as_tensor(class_weights, dtype=torch.float32)
    if cw.shape != (num_classes,) or not torch.isfinite(cw).all() or (cw < 0).any() or cw.sum() <= 0:
        raise ConfigError(
            f"`class_weights` must be {num_classes} finite non-negative values (one per class), "
            f"got shape {tuple(cw.shape)}."
        )
    return cw
