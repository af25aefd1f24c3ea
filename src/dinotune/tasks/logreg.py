"""Full-batch L-BFGS logistic regression along a path of regularisation strengths (the probe's second method).

A minibatch SGD head only approaches the regularised optimum when its schedule is long enough; on the
small train splits frozen-feature users have, a full-batch quasi-Newton solver reaches it exactly, in a
fraction of a second per strength. The objective is scikit-learn's `LogisticRegression` divided by N:

    (1/N) sum_i w_{y_i} CE(x_i W + b, y_i) + ||W||^2 / (2 C N)        (multinomial, bias not penalised)
    (1/N) sum_i sum_c pos_weight BCE(...)  + ||W||^2 / (2 C N)        (multi-label: one-vs-rest, jointly)

so `C` means what it means there. Strengths are fitted from the strongest (smallest C) to the weakest,
each warm-started from the previous solution: the path costs little more than its hardest point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dinotune.errors import ConfigError

__all__ = ["DEFAULT_CS", "PathPoint", "fit_logistic_path", "refit_logistic"]

DEFAULT_CS: tuple[float, ...] = tuple(10.0 ** (e / 2) for e in range(-8, 3))  # 1e-4 ... 10, half decades
_HISTORY = 20


@dataclass(frozen=True)
class PathPoint:
    """The solution at one C: weight (D, C_out), bias (C_out,), L-BFGS iterations used, whether it converged."""

    c: float
    weight: Tensor
    bias: Tensor
    iterations: int
    converged: bool


def _data_loss(
    logits: Tensor, targets: Tensor, multilabel: bool, class_weights: Tensor | None, label_smoothing: float
) -> Tensor:
    """Sum of per-sample losses / N (scikit-learn's sample-weighted sum, normalised by the count)."""
    n = logits.shape[0]
    if multilabel:
        eps = label_smoothing
        tgt = targets * (1 - eps) + eps / 2 if eps else targets
        return F.binary_cross_entropy_with_logits(logits, tgt, pos_weight=class_weights, reduction="sum") / n
    return F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=label_smoothing, reduction="sum") / n


def fit_logistic_path(
    x: Tensor,
    targets: Tensor,
    num_classes: int,
    cs: Sequence[float] = DEFAULT_CS,
    *,
    multilabel: bool = False,
    class_weights: Tensor | None = None,
    label_smoothing: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-4,
    init: PathPoint | None = None,
) -> list[PathPoint]:
    """Fit one logistic regression per C on (already standardised) x (N, D); returned in the order of `cs`.

    `tol` bounds the largest gradient entry of the (1/N-scaled) objective, as scikit-learn's lbfgs `tol`;
    `max_iter` caps L-BFGS iterations per C (a weakly regularised fit that hits it is early-stopped, not
    wrong: the path's stronger points are still exact). `converged` says whether `tol` was reached; in
    float32 a tol below ~1e-5 may stop on the loss no longer changing instead. `init` warm-starts.
    """
    if not cs or any(not (c > 0) for c in cs):
        raise ConfigError(
            f"`cs` must be a non-empty list of positive inverse regularisation strengths, got {list(cs)}."
        )
    if max_iter < 1 or not tol > 0:
        raise ConfigError(f"L-BFGS needs max_iter >= 1 and tol > 0, got {max_iter} and {tol}.")
    n, d = x.shape
    x = x.float()
    tgt = targets.float() if multilabel else targets.long()
    cw = None if class_weights is None else class_weights.float().to(x.device)
    weight = torch.zeros(d, num_classes, device=x.device) if init is None else init.weight.clone().to(x.device)
    bias = torch.zeros(num_classes, device=x.device) if init is None else init.bias.clone().to(x.device)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    solved: dict[float, PathPoint] = {}
    for c in sorted(set(float(c) for c in cs)):
        penalty = 0.5 / (c * n)
        opt = torch.optim.LBFGS(
            [weight, bias], lr=1.0, max_iter=max_iter, history_size=_HISTORY, tolerance_grad=tol,
            tolerance_change=1e-10, line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure(opt: torch.optim.LBFGS = opt, penalty: float = penalty) -> Tensor:
            opt.zero_grad()
            loss = _data_loss(torch.addmm(bias, x, weight), tgt, multilabel, cw, label_smoothing)
            loss = loss + penalty * weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        iterations = int(opt.state[weight].get("n_iter", 0))
        closure()  # the gradient at the solution, for the convergence flag
        grad = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
        solved[c] = PathPoint(c, weight.detach().clone(), bias.detach().clone(), iterations, grad <= tol)
    return [solved[float(c)] for c in cs]


def refit_logistic(
    x: Tensor, targets: Tensor, num_classes: int, c: float, start: PathPoint | None = None, **options: Any
) -> PathPoint:
    """One fit at a chosen C (e.g. on train+val after selection), warm-started from `start` when given."""
    return fit_logistic_path(x, targets, num_classes, (c,), init=start, **options)[0]
