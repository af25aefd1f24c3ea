"""Linear-probe sweep over frozen features, in the spirit of the DINOv3 linear evaluation.

A grid of linear heads (learning rate x weight decay x feature choice) is trained in one pass per
epoch: every minibatch of indices is gathered once per feature kind and fed to all heads. The heads of
one feature choice live in a single `HeadBank`, a (D, H, C) weight tensor evaluated with one GEMM
(`X @ W.view(D, H*C)`), so 39 heads cost little more than one. Each head has its own learning rate and
weight decay, applied by a vectorised SGD-momentum step over the stacked tensors.

Design choices (all deliberate, see the docstrings below):

* Standardisation: every feature kind is standardised with the train split's per-dimension mean and
  std (dimensions with std < 1e-6 keep std = 1). DINOv3 features are LayerNorm outputs of O(1) scale,
  so the official learning-rate grid keeps its meaning, while kinds of different scale (the class
  token vs. the smoother mean patch token) contribute comparably to a concatenated input. The stats
  travel with the head (`LinearHead.mean/std`) so inference applies exactly the same transform.
* Optimiser: SGD, momentum 0.9, coupled L2 weight decay on the weights only (not the bias), learning
  rate `lr * batch_size / 256` (the official scaling) under a per-step cosine schedule to zero; weights
  start at zero, so a head's trajectory does not depend on which other heads share its bank.
* Early stopping per head: after `patience` evaluations without a strictly better validation score, or
  as soon as its validation loss is not finite (divergence), a head is restored to its best weights
  and receives no further updates. The sweep ends early once every head has stopped.
* Selection: highest validation score (accuracy, or mAP for multi-label), ties broken by lower
  validation loss at that head's best evaluation, then smaller lr, smaller weight decay, and earlier
  feature choice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from dinotune.device import resolve_device
from dinotune.heads.linear import (
    LinearHead,
    build_input,
)
from dinotune.metrics import classification_metrics, multilabel_metrics
from dinotune.tasks.head_bank import FeatureSet, HeadBank, Standardiser
from dinotune.tasks.probe_checks import check_sweep
from dinotune.training.schedules import cosine

__all__ = [
    "DEFAULT_LRS",
    "DEFAULT_WEIGHT_DECAYS",
    "FeatureSet",
    "HeadBank",
    "HeadResult",
    "SweepResult",
    "sweep_linear_heads",
]

log = logging.getLogger(__name__)

DEFAULT_LRS: tuple[float, ...] = (
    1e-5,
    2e-5,
    5e-5,
    1e-4,
    2e-4,
    5e-4,
    1e-3,
    2e-3,
    5e-3,
    1e-2,
    2e-2,
    5e-2,
    1e-1,
)
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (0.0, 1e-4, 1e-3)
LR_REFERENCE_BATCH = 256


# --------------------------------------------------------------------------------------------------
# Sweep
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadResult:
    """One row of the sweep table: a head's config and its best validation evaluation."""

    feature_choice: str
    lr: float
    weight_decay: float
    best_epoch: int
    stopped_epoch: int | None
    val_score: float
    val_loss: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SweepResult:
    """Best head (config, nn.Linear weights, standardisation stats), all heads' scores, test report."""

    best: HeadResult
    state_dict: dict[str, Tensor]
    mean: Tensor
    std: Tensor
    metric: str
    multilabel: bool
    table: list[HeadResult]
    epochs_run: int
    test_score: float | None = None
    test_loss: float | None = None
    test_metrics: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def linear_head(self) -> LinearHead:
        return LinearHead(
            self.state_dict["weight"],
            self.state_dict["bias"],
            self.mean,
            self.std,
            feature_choice=self.best.feature_choice,
            multilabel=self.multilabel,
        )

    def table_rows(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.table]


@dataclass(frozen=True)
class SweepSettings:
    """The keyword arguments of `sweep_linear_heads`: the grid and how the heads train."""

    lrs: Sequence[float] = DEFAULT_LRS
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS
    feature_choices: Sequence[str] | None = None
    epochs: int = 50
    batch_size: int = 256
    patience: int | None = 10
    eval_every: int = 1
    multilabel: bool = False
    num_classes: int | None = None
    class_weights: Tensor | None = None
    label_smoothing: float = 0.0
    class_names: Sequence[str] | None = None
    seed: int = 0
    device: torch.device | str | None = None
    progress: bool = True


def sweep_linear_heads(
    train: FeatureSet, val: FeatureSet, test: FeatureSet | None = None, **options: Any
) -> SweepResult:
    """Train the grid lrs x weight_decays x feature_choices of linear heads and return the best one.

    `options` are `SweepSettings` fields. `feature_choices=None` uses every default choice whose feature
    kinds exist in `train`. Learning rates are scaled by batch_size / 256. `patience` counts evaluations
    (every `eval_every` epochs); None disables early stopping. With a `test` split, the selected head is
    scored on it and `test_metrics` holds `classification_metrics` / `multilabel_metrics`.
    """
    s = SweepSettings(**options)
    dev = resolve_device(s.device)
    choices, choice_kinds, c, cw = check_sweep(train, val, test, s)
    kinds = list(dict.fromkeys(k for ks in choice_kinds.values() for k in ks))

    def to_dev(split: FeatureSet) -> tuple[dict[str, Tensor], Tensor]:
        labels = split.labels.to(dev).float() if s.multilabel else split.labels.to(dev).long()
        return {k: split.features[k].to(dev) for k in kinds}, labels

    (train_x, train_y), (val_x, val_y) = to_dev(train), to_dev(val)
    std = Standardiser(train, kinds, dev)
    val_inputs = {ch: torch.cat([std.rows(val_x, k) for k in ks], 1) for ch, ks in choice_kinds.items()}
    grid = [(lr, wd) for lr in s.lrs for wd in s.weight_decays]
    lr_scale = s.batch_size / LR_REFERENCE_BATCH
    lrs, wds = [lr * lr_scale for lr, _ in grid], [wd for _, wd in grid]
    banks = {
        ch: HeadBank(val_inputs[ch].shape[1], c, lrs, wds, multilabel=s.multilabel, class_weights=cw,
                     label_smoothing=s.label_smoothing, device=dev)
        for ch in choices
    }  # fmt: skip
    epochs_run = _train(banks, choice_kinds, std, (train_x, train_y), (val_inputs, val_y), s)
    extras = {"lr_scale": lr_scale, "num_classes": c, "feature_choices": choices}
    result = _select(banks, grid, choices, std.concat_stats, choice_kinds, s.multilabel, epochs_run, extras)
    if test is not None:
        _score_test(result, test, cw, s.label_smoothing, s.class_names)
    best = result.best
    log.info("linear sweep: best head %s, lr %g, weight decay %g (val %s %.4f)", best.feature_choice, best.lr,
             best.weight_decay, result.metric, best.val_score)  # fmt: skip
    return result


def _select(
    banks: dict[str, HeadBank],
    grid: list[tuple[float, float]],
    choices: list[str],
    concat_stats: Any,
    choice_kinds: dict[str, tuple[str, ...]],
    multilabel: bool,
    epochs_run: int,
    extras: dict[str, Any],
) -> SweepResult:
    """The table of every head and the selected one (best validation score; ties: lower loss, smaller lr)."""
    table = [
        HeadResult(
            feature_choice=ch,
            lr=lr,
            weight_decay=wd,
            best_epoch=int(bank.best_epoch[i]),
            stopped_epoch=int(bank.stopped_epoch[i]) or None,
            val_score=float(bank.best_score[i]),
            val_loss=float(bank.best_loss[i]),
        )
        for ch, bank in banks.items()
        for i, (lr, wd) in enumerate(grid)
    ]
    order = {ch: i for i, ch in enumerate(choices)}
    best = min(table, key=lambda r: (-r.val_score, r.val_loss, r.lr, r.weight_decay, order[r.feature_choice]))
    mean, sd = concat_stats(choice_kinds[best.feature_choice])
    state = banks[best.feature_choice].head_state(grid.index((best.lr, best.weight_decay)))
    return SweepResult(
        best=best,
        state_dict=state,
        mean=mean,
        std=sd,
        metric="map" if multilabel else "accuracy",
        multilabel=multilabel,
        table=table,
        epochs_run=epochs_run,
        extras=extras,
    )


def _train(
    banks: dict[str, HeadBank],
    choice_kinds: dict[str, tuple[str, ...]],
    std: Standardiser,
    train: tuple[dict[str, Tensor], Tensor],
    val: tuple[dict[str, Tensor], Tensor],
    s: SweepSettings,
) -> int:
    """The single-pass loop: gather each minibatch once per kind, step every bank. Returns epochs run."""
    (train_x, train_y), (val_inputs, val_y) = train, val
    epochs, batch_size, patience, eval_every = s.epochs, s.batch_size, s.patience, s.eval_every
    n = train_y.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(s.seed)
    step = 0
    bar = tqdm(range(1, epochs + 1), desc="linear sweep", disable=None if s.progress else True, leave=False)
    epoch = 0
    for epoch in bar:
        perm = torch.randperm(n, generator=gen).to(train_y.device)
        live = [ch for ch, b in banks.items() if bool(b.active.any())]
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            rows = {k: std.rows(train_x, k, idx) for k in {k for ch in live for k in choice_kinds[ch]}}
            y = train_y.index_select(0, idx)
            factor = cosine(step, total_steps, 1.0, 0.0)
            for ch in live:
                x = (
                    torch.cat([rows[k] for k in choice_kinds[ch]], 1)
                    if len(choice_kinds[ch]) > 1
                    else rows[choice_kinds[ch][0]]
                )
                banks[ch].train_step(x, y, factor)
            step += 1
        if epoch % eval_every == 0 or epoch == epochs:
            for ch in live:
                score, loss = banks[ch].evaluate(val_inputs[ch], val_y)
                banks[ch].record_evaluation(score, loss, epoch, patience)
            best = max(float(b.best_score.max()) for b in banks.values())
            bar.set_postfix(best_val=f"{best:.4f}")
        if not any(bool(b.active.any()) for b in banks.values()):
            if epoch < epochs:
                log.info("linear sweep: every head stopped early, at epoch %d of %d", epoch, epochs)
            break
    return epoch


def _score_test(
    result: SweepResult,
    test: FeatureSet,
    class_weights: Tensor | None,
    label_smoothing: float,
    class_names: Sequence[str] | None,
) -> None:
    """Score the selected head on the test split with the same loss and metric as validation."""
    head = result.linear_head()
    x = build_input(test.features, result.best.feature_choice).cpu()
    with torch.no_grad():
        logits = head(x)
    targets = test.labels.cpu().float() if result.multilabel else test.labels.cpu().long()
    if result.multilabel:
        tgt = targets * (1 - label_smoothing) + label_smoothing / 2 if label_smoothing else targets
        loss = F.binary_cross_entropy_with_logits(logits, tgt, pos_weight=class_weights)
        result.test_metrics = multilabel_metrics(torch.sigmoid(logits), targets, class_names)
        result.test_score = result.test_metrics["map"]
    else:
        loss = F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=label_smoothing)
        result.test_metrics = classification_metrics(logits.softmax(1), targets, class_names)
        result.test_score = result.test_metrics["accuracy"]
    result.test_loss = float(loss)
