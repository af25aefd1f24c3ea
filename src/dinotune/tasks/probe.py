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

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from dinotune.errors import ConfigError, DataError
from dinotune.metrics import average_precision_columns, classification_metrics, multilabel_metrics

__all__ = [
    "DEFAULT_FEATURE_CHOICES",
    "DEFAULT_LRS",
    "DEFAULT_WEIGHT_DECAYS",
    "FeatureSet",
    "HeadBank",
    "HeadResult",
    "LinearHead",
    "SweepResult",
    "available_feature_choices",
    "build_input",
    "parse_feature_choice",
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
DEFAULT_FEATURE_CHOICES: tuple[str, ...] = ("cls", "cls+patch_mean", "last4_cls+patch_mean")
MOMENTUM = 0.9
LR_REFERENCE_BATCH = 256
_KIND_ALIASES = {"last4_cls": "cls_last4"}
_STD_FLOOR = 1e-6
_EVAL_BUDGET = 1 << 23  # elements of a (rows, heads * classes) logits chunk during evaluation


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """One split: feature kind -> (N, D_kind) tensor, and labels (N,) int or (N, C) multi-hot float."""

    features: dict[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def parse_feature_choice(choice: str) -> tuple[str, ...]:
    """'last4_cls+patch_mean' -> ('cls_last4', 'patch_mean'): the feature kinds concatenated in order."""
    parts = tuple(_KIND_ALIASES.get(p.strip(), p.strip()) for p in choice.split("+"))
    if not choice or any(not p for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(
            f"Feature choice {choice!r} is malformed: use feature kinds joined by '+', each once, "
            f"e.g. {', '.join(DEFAULT_FEATURE_CHOICES)}."
        )
    return parts


def available_feature_choices(features: Mapping[str, Tensor]) -> list[str]:
    """The default feature choices whose inputs exist in `features`."""
    return [c for c in DEFAULT_FEATURE_CHOICES if all(k in features for k in parse_feature_choice(c))]


def build_input(features: Mapping[str, Tensor], choice: str) -> Tensor:
    """Concatenate the raw feature kinds of `choice` into the (N, D_in) input a `LinearHead` expects."""
    kinds = parse_feature_choice(choice)
    missing = [k for k in kinds if k not in features]
    if missing:
        raise DataError(
            f"Feature choice {choice!r} needs feature kinds {missing} that are not in the features "
            f"(available: {sorted(features)}); extract them or pick another choice."
        )
    return torch.cat([features[k].float() for k in kinds], dim=1)


# --------------------------------------------------------------------------------------------------
# Inference head
# --------------------------------------------------------------------------------------------------


class LinearHead(nn.Module):
    """Standardise then linear: the deployable form of a sweep's best head."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        mean: Tensor,
        std: Tensor,
        *,
        feature_choice: str = "cls",
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        num_classes, in_dim = weight.shape
        if bias.shape != (num_classes,) or mean.shape != (in_dim,) or std.shape != (in_dim,):
            raise DataError(
                f"LinearHead tensors disagree: weight {tuple(weight.shape)}, bias {tuple(bias.shape)}, "
                f"mean {tuple(mean.shape)}, std {tuple(std.shape)}; expected (C, D), (C,), (D,), (D,)."
            )
        self.feature_choice = feature_choice
        self.multilabel = multilabel
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())
        self.linear = nn.Linear(in_dim, num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, C) from raw concatenated features (N, D) (see `build_input`)."""
        return self.linear((x.float() - self.mean) / self.std)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Softmax (single-label) or per-label sigmoid (multi-label) probabilities."""
        logits = self(x)
        return torch.sigmoid(logits) if self.multilabel else logits.softmax(dim=1)

    def save(self, path: str | Path) -> None:
        """Write weights and stats as safetensors; feature choice and task go in the metadata."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"feature_choice": self.feature_choice, "multilabel": json.dumps(self.multilabel)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> LinearHead:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"Linear head file {path} does not exist.")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        try:
            return cls(
                t["linear.weight"],
                t["linear.bias"],
                t["mean"],
                t["std"],
                feature_choice=meta.get("feature_choice", "cls"),
                multilabel=json.loads(meta.get("multilabel", "false")),
            )
        except KeyError as e:
            raise DataError(f"{path} is not a dinotune linear head: tensor {e} is missing.") from None


# --------------------------------------------------------------------------------------------------
# Batched heads
# --------------------------------------------------------------------------------------------------


def _standardisation_stats(x: Tensor, chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std (float64 accumulation, chunked to bound memory)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].double()
        total += part.sum(0)
        total_sq += (part * part).sum(0)
    mean = total / x.shape[0]
    std = (total_sq / x.shape[0] - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < _STD_FLOOR, torch.ones_like(std), std)
    return mean.float(), std.float()


class HeadBank:
    """H linear heads over one input, stored as one (D, H, C) weight and (H, C) bias.

    Call `train_step` once per minibatch and `record_evaluation` after each validation pass; heads
    that stopped (early stopping or divergence) are masked out of every later update.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        *,
        multilabel: bool = False,
        class_weights: Tensor | None = None,
        label_smoothing: float = 0.0,
        momentum: float = MOMENTUM,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(lrs) != len(weight_decays):
            raise ConfigError("HeadBank needs one weight decay per learning rate.")
        h = len(lrs)
        self.num_heads, self.num_classes, self.in_dim = h, num_classes, in_dim
        self.multilabel = multilabel
        self.label_smoothing = label_smoothing
        self.momentum = momentum
        self.class_weights = None if class_weights is None else class_weights.float().to(device)
        self.lrs = torch.tensor(list(lrs), dtype=torch.float32, device=device)
        self.weight_decays = torch.tensor(list(weight_decays), dtype=torch.float32, device=device)
        self.weight = torch.zeros(in_dim, h, num_classes, device=device)
        self.bias = torch.zeros(h, num_classes, device=device)
        self._buf_w = torch.zeros(in_dim, h, num_classes, device=device)
        self._buf_b = torch.zeros(h, num_classes, device=device)
        self.active = torch.ones(h, dtype=torch.bool, device=device)
        self.best_weight = self.weight.clone()
        self.best_bias = self.bias.clone()
        self.best_score = torch.full((h,), -math.inf, device=device)
        self.best_loss = torch.full((h,), math.inf, device=device)
        self.best_epoch = torch.zeros(h, dtype=torch.long, device=device)
        self.stopped_epoch = torch.zeros(h, dtype=torch.long, device=device)
        self._stale = torch.zeros(h, dtype=torch.long, device=device)

    def logits(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """(B, H, C) logits of all heads in one GEMM over the shared input x (B, D)."""
        w = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        out = torch.addmm(b.reshape(1, -1), x, w.reshape(self.in_dim, -1))
        return out.view(x.shape[0], self.num_heads, self.num_classes)

    def _soft_targets(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Single-label CE as -sum_c T[i, c] log p[i, c]: T folds class weights and label smoothing.

        T = (1 - eps) w[y] onehot(y) + (eps / C) w, exactly `F.cross_entropy`'s weighted, smoothed loss;
        its mean reduction divides by sum_i w[y_i] (returned as the normaliser).
        """
        c, eps = self.num_classes, self.label_smoothing
        onehot = F.one_hot(targets, c).float()
        if self.class_weights is None:
            return onehot * (1 - eps) + eps / c, torch.tensor(float(targets.shape[0]), device=targets.device)
        w = self.class_weights
        soft = onehot * ((1 - eps) * w[targets]).unsqueeze(1) + (eps / c) * w
        return soft, w[targets].sum()

    def _bce_targets(self, targets: Tensor) -> Tensor:
        eps = self.label_smoothing
        return targets * (1 - eps) + eps / 2 if eps else targets

    def loss_sums(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head loss summed over the batch (H,) and the normaliser that turns it into a mean."""
        b, h, c = logits.shape
        if self.multilabel:
            tgt = self._bce_targets(targets.float()).unsqueeze(1).expand(b, h, c)
            per = F.binary_cross_entropy_with_logits(
                logits, tgt, pos_weight=self.class_weights, reduction="none"
            )
            return per.sum((0, 2)), torch.tensor(float(b * c), device=logits.device)
        soft, norm = self._soft_targets(targets)
        per = -(logits.log_softmax(2) * soft.unsqueeze(1)).sum(2)
        return per.sum(0), norm

    def _logit_grad(self, logits: Tensor, targets: Tensor) -> Tensor:
        """d(mean loss)/d(logits), in closed form: cheaper than autograd through (B, H, C)."""
        if self.multilabel:
            t = self._bce_targets(targets.float()).unsqueeze(1)
            sig = torch.sigmoid(logits)
            if self.class_weights is None:
                grad = sig - t
            else:
                pt = self.class_weights * t
                grad = (pt + 1 - t) * sig - pt
            return grad / (logits.shape[0] * self.num_classes)
        soft, norm = self._soft_targets(targets)
        coeff = soft.sum(1).view(-1, 1, 1)
        return (logits.softmax(2) * coeff - soft.unsqueeze(1)) / norm

    @torch.no_grad()
    def train_step(self, x: Tensor, targets: Tensor, lr_factor: float = 1.0) -> None:
        """One SGD-momentum step of every active head on minibatch (x, targets).

        Gradients are per head (each head's loss is a mean over the batch), so heads are independent;
        torch.optim.SGD semantics: buf = m * buf + (g + wd * w); w -= lr * buf.
        """
        d_logits = self._logit_grad(self.logits(x), targets).reshape(x.shape[0], -1)
        g_w = (x.T @ d_logits).view_as(self.weight)
        g_w.addcmul_(self.weight, self.weight_decays.view(1, -1, 1))
        neg_lr = -(self.lrs * lr_factor * self.active)
        self._buf_w = g_w.add_(self._buf_w, alpha=self.momentum)  # reuse the gradient's memory
        self._buf_b.mul_(self.momentum).add_(d_logits.sum(0).view_as(self.bias))
        self.weight.addcmul_(self._buf_w, neg_lr.view(1, -1, 1))
        self.bias.addcmul_(self._buf_b, neg_lr.view(-1, 1))

    @torch.no_grad()
    def evaluate(self, x: Tensor, targets: Tensor, *, best: bool = False) -> tuple[Tensor, Tensor]:
        """Validation score (H,) (accuracy or mAP) and mean loss (H,) of the current (or best) weights."""
        w, b = (self.best_weight, self.best_bias) if best else (self.weight, self.bias)
        rows = max(1, _EVAL_BUDGET // (self.num_heads * self.num_classes))
        loss_sum = torch.zeros(self.num_heads, device=x.device, dtype=torch.float64)
        norm_sum = 0.0
        correct = torch.zeros(self.num_heads, device=x.device, dtype=torch.float64)
        all_logits = []
        for start in range(0, x.shape[0], rows):
            logits = self.logits(x[start : start + rows], w, b)
            tgt = targets[start : start + rows]
            sums, norm = self.loss_sums(logits, tgt)
            loss_sum += sums.double()
            norm_sum += float(norm)
            if self.multilabel:
                all_logits.append(logits.reshape(logits.shape[0], -1))
            else:
                correct += (logits.argmax(2) == tgt.unsqueeze(1)).sum(0).double()
        loss = (loss_sum / norm_sum).float()
        if self.multilabel:
            score = _map_per_head(torch.cat(all_logits), targets, self.num_heads)
        else:
            score = (correct / x.shape[0]).float()
        bad = ~torch.isfinite(loss) | ~torch.isfinite(score)
        return torch.where(bad, -math.inf, score), torch.where(bad, math.inf, loss)

    @torch.no_grad()
    def record_evaluation(self, score: Tensor, loss: Tensor, epoch: int, patience: int | None) -> None:
        """Keep each active head's best weights; stop heads out of patience or diverged."""
        improved = self.active & (score > self.best_score)
        self.best_score = torch.where(improved, score, self.best_score)
        self.best_loss = torch.where(improved, loss, self.best_loss)
        self.best_epoch = torch.where(improved, epoch, self.best_epoch)
        mask = improved.view(1, -1, 1)
        self.best_weight = torch.where(mask, self.weight, self.best_weight)
        self.best_bias = torch.where(improved.view(-1, 1), self.bias, self.best_bias)
        self._stale = torch.where(improved, 0, self._stale + 1)
        stop = self.active & ~torch.isfinite(loss)
        if patience is not None:
            stop |= self.active & (self._stale >= patience)
        if stop.any():
            self.stop(stop, epoch)

    @torch.no_grad()
    def stop(self, heads: Tensor, epoch: int) -> None:
        """Freeze `heads` (bool mask): restore best weights, clear momentum, exclude from updates."""
        self.weight.copy_(torch.where(heads.view(1, -1, 1), self.best_weight, self.weight))
        self.bias.copy_(torch.where(heads.view(-1, 1), self.best_bias, self.bias))
        self._buf_w.masked_fill_(heads.view(1, -1, 1), 0.0)
        self._buf_b.masked_fill_(heads.view(-1, 1), 0.0)
        self.stopped_epoch = torch.where(heads, epoch, self.stopped_epoch)
        self.active &= ~heads

    def head_state(self, index: int, *, best: bool = True) -> dict[str, Tensor]:
        """nn.Linear-compatible {'weight': (C, D), 'bias': (C,)} of head `index`."""
        w, b = (self.best_weight, self.best_bias) if best else (self.weight, self.bias)
        return {"weight": w[:, index, :].T.contiguous().cpu(), "bias": b[index].clone().cpu()}


def _map_per_head(logits: Tensor, targets: Tensor, num_heads: int) -> Tensor:
    """Macro AP per head over labels with at least one positive; logits (N, H*C), targets (N, C)."""
    c = targets.shape[1]
    ap = average_precision_columns(logits, targets.repeat(1, num_heads)).view(num_heads, c)
    has_pos = targets.sum(0) > 0
    if not has_pos.any():
        return torch.full((num_heads,), math.nan, device=logits.device)
    return ap[:, has_pos].mean(1)


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


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
        raise ConfigError(
            f"`weight_decays` must be a non-empty list of values >= 0, got {list(weight_decays)}."
        )
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"`epochs` and `batch_size` must be >= 1, got {epochs} and {batch_size}.")


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


class _Standardiser:
    """Per-kind train statistics; standardises gathered rows of any split on the fly."""

    def __init__(self, train: FeatureSet, kinds: Sequence[str], device: torch.device) -> None:
        self.stats = {k: _standardisation_stats(train.features[k].to(device).float()) for k in kinds}

    def rows(self, split_features: Mapping[str, Tensor], kind: str, idx: Tensor | None = None) -> Tensor:
        x = split_features[kind]
        x = x if idx is None else x.index_select(0, idx)
        mean, std = self.stats[kind]
        return (x.float() - mean) / std

    def concat_stats(self, kinds: Sequence[str]) -> tuple[Tensor, Tensor]:
        mean = torch.cat([self.stats[k][0] for k in kinds]).cpu()
        std = torch.cat([self.stats[k][1] for k in kinds]).cpu()
        return mean, std


def sweep_linear_heads(
    train: FeatureSet,
    val: FeatureSet,
    test: FeatureSet | None = None,
    *,
    lrs: Sequence[float] = DEFAULT_LRS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    feature_choices: Sequence[str] | None = None,
    epochs: int = 50,
    batch_size: int = 256,
    patience: int | None = 10,
    eval_every: int = 1,
    multilabel: bool = False,
    num_classes: int | None = None,
    class_weights: Tensor | None = None,
    label_smoothing: float = 0.0,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> SweepResult:
    """Train the grid lrs x weight_decays x feature_choices of linear heads and return the best one.

    `feature_choices=None` uses every default choice whose feature kinds exist in `train`. Learning
    rates are scaled by batch_size / 256. `patience` counts evaluations (every `eval_every` epochs);
    None disables early stopping. With a `test` split, the selected head is scored on it and
    `test_metrics` holds `classification_metrics` / `multilabel_metrics`.
    """
    dev = _resolve_device(device)
    _check_grid(lrs, weight_decays, epochs, batch_size)
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
    if eval_every < 1 or (patience is not None and patience < 1):
        raise ConfigError(
            "`eval_every` must be >= 1 and `patience` >= 1 (or None to disable early stopping)."
        )
    choices = (
        list(feature_choices) if feature_choices is not None else available_feature_choices(train.features)
    )
    if not choices:
        raise DataError(
            f"No feature choice can be built from the train features {sorted(train.features)}; "
            f"the defaults need {', '.join(DEFAULT_FEATURE_CHOICES)}."
        )
    choice_kinds = {c: parse_feature_choice(c) for c in choices}
    kinds = list(dict.fromkeys(k for ks in choice_kinds.values() for k in ks))
    splits = [s for s in (train, val, test) if s is not None]
    for split, name in zip(splits, ("train", "val", "test"), strict=False):
        _check_split(split, name, kinds, multilabel)
    c = _num_classes(splits, multilabel, num_classes)
    cw = _check_class_weights(class_weights, c)

    def to_dev(split: FeatureSet) -> tuple[dict[str, Tensor], Tensor]:
        labels = split.labels.to(dev).float() if multilabel else split.labels.to(dev).long()
        return {k: split.features[k].to(dev) for k in kinds}, labels

    train_x, train_y = to_dev(train)
    val_x, val_y = to_dev(val)
    std = _Standardiser(train, kinds, dev)
    val_inputs = {ch: torch.cat([std.rows(val_x, k) for k in ks], 1) for ch, ks in choice_kinds.items()}
    grid = [(lr, wd) for lr in lrs for wd in weight_decays]
    lr_scale = batch_size / LR_REFERENCE_BATCH
    banks = {
        ch: HeadBank(
            val_inputs[ch].shape[1],
            c,
            [lr * lr_scale for lr, _ in grid],
            [wd for _, wd in grid],
            multilabel=multilabel,
            class_weights=cw,
            label_smoothing=label_smoothing,
            device=dev,
        )
        for ch in choices
    }
    epochs_run = _train(
        banks,
        choice_kinds,
        std,
        train_x,
        train_y,
        val_inputs,
        val_y,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        eval_every=eval_every,
        seed=seed,
        progress=progress,
    )
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
    bank = banks[best.feature_choice]
    mean, sd = std.concat_stats(choice_kinds[best.feature_choice])
    result = SweepResult(
        best=best,
        state_dict=bank.head_state(grid.index((best.lr, best.weight_decay))),
        mean=mean,
        std=sd,
        metric="map" if multilabel else "accuracy",
        multilabel=multilabel,
        table=table,
        epochs_run=epochs_run,
        extras={"lr_scale": lr_scale, "num_classes": c, "feature_choices": choices},
    )
    if test is not None:
        _score_test(result, test, cw, label_smoothing, class_names)
    log.info("linear sweep: best %s (val %s %.4f)", best, result.metric, best.val_score)
    return result


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


def _train(
    banks: dict[str, HeadBank],
    choice_kinds: dict[str, tuple[str, ...]],
    std: _Standardiser,
    train_x: dict[str, Tensor],
    train_y: Tensor,
    val_inputs: dict[str, Tensor],
    val_y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    patience: int | None,
    eval_every: int,
    seed: int,
    progress: bool,
) -> int:
    """The single-pass loop: gather each minibatch once per kind, step every bank. Returns epochs run."""
    n = train_y.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    step = 0
    bar = tqdm(range(1, epochs + 1), desc="linear sweep", disable=not progress, leave=False)
    epoch = 0
    for epoch in bar:
        perm = torch.randperm(n, generator=gen).to(train_y.device)
        live = [ch for ch, b in banks.items() if bool(b.active.any())]
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            rows = {k: std.rows(train_x, k, idx) for k in {k for ch in live for k in choice_kinds[ch]}}
            y = train_y.index_select(0, idx)
            factor = _cosine(step, total_steps)
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
            log.info("linear sweep: every head stopped early at epoch %d", epoch)
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
