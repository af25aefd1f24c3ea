"""Linear-probe sweep over frozen features: an L-BFGS logistic-regression C path and an SGD head grid.

Two methods train linear heads on the same standardised features, and one rule keeps one head. The
default trains the L-BFGS path only (`DEFAULT_METHODS`); the SGD grid is one setting away:

* SGD grid, in the spirit of the DINOv3 linear evaluation: learning rate x weight decay x feature
  choice, trained in one pass per epoch (every minibatch gathered once and fed to all heads; the heads
  of one feature choice live in a single `HeadBank`, one GEMM for all). SGD, momentum 0.9, coupled L2
  weight decay on the weights only, lr * batch_size / 256 under a per-step cosine schedule to zero,
  weights start at zero. Per-head early stopping: after `patience` evaluations without a better
  validation score, or at once on a non-finite validation loss, a head is restored to its best weights.
* L-BFGS path (`tasks.logreg`): full-batch multinomial (multi-label: one-vs-rest) logistic regression
  at each C of `cs`, scikit-learn's objective, warm-started from the strongest regularisation down.
  On the small splits of frozen-feature work it reaches the regularised optimum that a short SGD
  schedule only approaches - the reason a plain scikit-learn model used to beat the default probe.
* Standardisation: every feature kind uses the train split's per-dimension mean and std (std < 1e-6
  kept at 1); the stats travel with the head (`LinearHead.mean/std`), so inference matches.
* Selection (`head_selection`): every head of both methods is scored on validation with the same loss
  and metric; the default rule keeps the lowest-loss head among those within one standard error of
  the best validation score. Test labels are read only to score the kept head. `refit=True` refits an
  L-BFGS winner on train+val at its C (off by default: `evaluate` fits calibration on val, and the
  reported validation score should stay a held-out figure).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
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
from dinotune.tasks.head_selection import DEFAULT_SELECTION, HeadResult, select_head
from dinotune.tasks.logreg import DEFAULT_CS, fit_logistic_path, refit_logistic
from dinotune.tasks.probe_checks import check_sweep
from dinotune.training.schedules import cosine

__all__ = [
    "DEFAULT_CS",
    "DEFAULT_LRS",
    "DEFAULT_METHODS",
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
# The SGD grid is opt-in: on ELPV and Fashion-MNIST (benchmarks/linear_probe.py) it won selection in 2 of 6
# splits, never with a better test accuracy than the L-BFGS path alone, and cost more than the whole path.
DEFAULT_METHODS: tuple[str, ...] = ("lbfgs",)
LR_REFERENCE_BATCH = 256


# --------------------------------------------------------------------------------------------------
# Sweep
# --------------------------------------------------------------------------------------------------


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
    methods: Sequence[str] = DEFAULT_METHODS
    cs: Sequence[float] = DEFAULT_CS
    lbfgs_max_iter: int = 100
    selection: str = DEFAULT_SELECTION
    refit: bool = False


def sweep_linear_heads(
    train: FeatureSet, val: FeatureSet, test: FeatureSet | None = None, **options: Any
) -> SweepResult:
    """Train the L-BFGS path (cs) and/or the SGD grid (lrs x weight_decays) per feature choice; keep the best.

    `options` are `SweepSettings` fields. `feature_choices=None` uses every default choice whose feature
    kinds exist in `train`. Learning rates are scaled by batch_size / 256. `patience` counts evaluations
    (every `eval_every` epochs); None disables early stopping. `methods` picks "sgd" and/or "lbfgs";
    `selection` the rule of `head_selection`, read on validation only; `refit` refits an L-BFGS winner on
    train+val at its C. With a `test` split, the selected head is scored on it afterwards.
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
    loss_options = {"multilabel": s.multilabel, "class_weights": cw, "label_smoothing": s.label_smoothing}
    heads: list[tuple[HeadResult, Callable[[], dict[str, Tensor]]]] = []
    epochs_run, lr_scale = 0, s.batch_size / LR_REFERENCE_BATCH
    if "sgd" in s.methods:
        grid = [(lr, wd) for lr in s.lrs for wd in s.weight_decays]
        lrs, wds = [lr * lr_scale for lr, _ in grid], [wd for _, wd in grid]
        banks = {ch: HeadBank(val_inputs[ch].shape[1], c, lrs, wds, device=dev, **loss_options) for ch in choices}
        epochs_run = _train(banks, choice_kinds, std, (train_x, train_y), (val_inputs, val_y), s)
        heads += _sgd_heads(banks, grid)
    if "lbfgs" in s.methods:
        for ch, ks in choice_kinds.items():
            x = torch.cat([std.rows(train_x, k) for k in ks], 1)
            heads += _lbfgs_heads(ch, x, train_y, (val_inputs[ch], val_y), c, loss_options, s)
    table = [row for row, _ in heads]
    best, state = heads[select_head(table, len(val), s.selection, choices)]
    mean, sd = std.concat_stats(choice_kinds[best.feature_choice])
    extras = {"lr_scale": lr_scale, "num_classes": c, "feature_choices": choices, "selection": s.selection,
              "refit": False}  # fmt: skip
    weights = state()
    if s.refit and best.method == "lbfgs":
        weights, mean, sd = _refit(best, weights, (train, val), choice_kinds[best.feature_choice], c, loss_options, s)
        extras["refit"] = True
    result = SweepResult(best=best, state_dict=weights, mean=mean, std=sd, metric="map" if s.multilabel else "accuracy",
                         multilabel=s.multilabel, table=table, epochs_run=epochs_run, extras=extras)  # fmt: skip
    if test is not None:
        _score_test(result, test, cw, s.label_smoothing, s.class_names)
    log.info("linear sweep: kept %s (val %s %.4f, loss %.4f)", describe_head(best), result.metric, best.val_score,
             best.val_loss)  # fmt: skip
    return result


def describe_head(row: HeadResult) -> str:
    """'lbfgs C=0.1 on cls+patch_mean' / 'sgd lr=0.01 wd=0 on cls': what a person needs to know."""
    if row.method == "lbfgs":
        return f"lbfgs C={row.c:g} on {row.feature_choice}"
    return f"sgd lr={row.lr:g} wd={row.weight_decay:g} on {row.feature_choice}"


def _sgd_heads(
    banks: dict[str, HeadBank], grid: list[tuple[float, float]]
) -> list[tuple[HeadResult, Callable[[], dict[str, Tensor]]]]:
    """Every SGD head's row (its best evaluation) and a way to read its kept weights."""
    out = []
    for ch, bank in banks.items():
        for i, (lr, wd) in enumerate(grid):
            row = HeadResult(ch, lr, wd, int(bank.best_epoch[i]), int(bank.stopped_epoch[i]) or None,
                             float(bank.best_score[i]), float(bank.best_loss[i]))  # fmt: skip
            out.append((row, partial(bank.head_state, i)))
    return out


def _lbfgs_heads(
    choice: str, x: Tensor, y: Tensor, val: tuple[Tensor, Tensor], c: int, loss_options: dict, s: SweepSettings
) -> list[tuple[HeadResult, Callable[[], dict[str, Tensor]]]]:
    """The L-BFGS path on one feature choice, scored on validation exactly as the SGD heads are."""
    path = fit_logistic_path(x, y, c, s.cs, max_iter=s.lbfgs_max_iter, **loss_options)
    weight, bias = torch.stack([p.weight for p in path], 1), torch.stack([p.bias for p in path])
    bank = HeadBank.from_weights(weight, bias, **loss_options)
    score, loss = bank.evaluate(*val)
    rows = [
        HeadResult(choice, None, None, p.iterations, None, float(score[i]), float(loss[i]), method="lbfgs", c=p.c)
        for i, p in enumerate(path)
    ]
    return [(row, partial(bank.head_state, i, best=False)) for i, row in enumerate(rows)]


def _refit(
    best: HeadResult,
    weights: dict[str, Tensor],
    splits: tuple[FeatureSet, FeatureSet],
    kinds: tuple[str, ...],
    c: int,
    loss_options: dict,
    s: SweepSettings,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The kept L-BFGS head refitted on train+val at its C (standardised with train+val statistics)."""
    train, val = splits
    both = FeatureSet({k: torch.cat([train.features[k], val.features[k]]) for k in kinds},
                      torch.cat([train.labels, val.labels]))  # fmt: skip
    dev = resolve_device(s.device)
    std = Standardiser(both, kinds, dev)
    x = torch.cat([std.rows(both.features, k).to(dev) for k in kinds], 1)
    y = both.labels.to(dev).float() if s.multilabel else both.labels.to(dev).long()
    assert best.c is not None
    point = refit_logistic(x, y, c, best.c, max_iter=s.lbfgs_max_iter, **loss_options)
    mean, sd = std.concat_stats(kinds)
    return {"weight": point.weight.T.contiguous().cpu(), "bias": point.bias.cpu()}, mean, sd


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
