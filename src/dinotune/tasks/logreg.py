"""Full-batch L-BFGS logistic regression along a path of regularisation strengths (the probe's method).

A minibatch SGD head only approaches the regularised optimum when its schedule is long enough; on the
small train splits frozen-feature users have, a full-batch quasi-Newton solver reaches it exactly, in a
fraction of a second per strength. The objective is scikit-learn's `LogisticRegression` divided by N:

    (1/N) sum_i w_{y_i} CE(x_i W + b, y_i) + ||W||^2 / (2 C N)        (multinomial, bias not penalised)
    (1/N) sum_i sum_c pos_weight BCE(...)  + ||W||^2 / (2 C N)        (multi-label: one-vs-rest, jointly)

so `C` means what it means there. The solver is scipy's L-BFGS-B (scikit-learn's too), fed a closed-form
loss and gradient (`_Objective`: numpy on the CPU, torch on CUDA). The torch.optim.LBFGS it replaces was
10x slower than scikit-learn on ELPV: its Python bookkeeping, and torch's slow CPU GEMM on these skinny
products, dominated. Strengths are fitted from the strongest (smallest C) to the weakest, each
warm-started from the previous solution.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from threadpoolctl import ThreadpoolController
from torch import Tensor

from dinotune.errors import ConfigError

__all__ = ["DEFAULT_CS", "PathPoint", "fit_logistic_path", "refit_logistic"]

DEFAULT_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # decades, as LogisticRegressionCV spaces them
_HISTORY = 10  # L-BFGS memory: scipy's (and scikit-learn's) default
_MAX_LINE_SEARCH = 50  # as scikit-learn


@dataclass(frozen=True)
class PathPoint:
    """The solution at one C: weight (D, C_out), bias (C_out,), L-BFGS iterations used, whether it converged."""

    c: float
    weight: Tensor
    bias: Tensor
    iterations: int
    converged: bool


class _Objective:
    """Loss and gradient of the (1/N-scaled) objective at a flat float64 parameter vector [W, b].

    On the CPU the arithmetic runs in numpy float32: for these skinny (N, D) @ (D, classes) products torch's
    CPU GEMM measured 10-30x slower than numpy's OpenBLAS (AMD EPYC, torch 2.13 with MKL), and the per-op
    overhead of torch dominated the rest. Elsewhere (CUDA) the same formulas run in torch on the device.
    """

    def __init__(
        self,
        x: Tensor,
        targets: Tensor,
        num_classes: int,
        multilabel: bool,
        class_weights: Tensor | None,
        eps: float,
        use_numpy: bool | None = None,
    ) -> None:
        self.n, self.d, self.k = x.shape[0], x.shape[1], num_classes
        self.multilabel, self.penalty, self.device = multilabel, 0.0, x.device
        self.xp = np if (x.device.type == "cpu" if use_numpy is None else use_numpy) else torch
        cw = None if class_weights is None else class_weights.float().to(x.device)
        if multilabel:  # smoothed targets t and pos_weight p: BCE = (1-t) z + (1 + (p-1) t) softplus(-z)
            t = targets.float().to(x.device)
            t = t * (1 - eps) + eps / 2 if eps else t
            pt = t if cw is None else t * cw
            arrays = {"t": t, "pt": pt, "lw": 1 + pt - t}
        else:  # soft targets T fold class weights and smoothing: CE_i = sum_c T_ic (lse_i - z_ic)
            y = targets.long().to(x.device)
            w = torch.ones(num_classes, device=x.device) if cw is None else cw
            soft = F.one_hot(y, num_classes).float() * ((1 - eps) * w[y]).unsqueeze(1) + (eps / num_classes) * w
            arrays = {"soft": soft, "mass": soft.sum(1, keepdim=True)}
        arrays["x"] = x.float()
        for name, value in arrays.items():
            setattr(self, name, value.contiguous().numpy() if self.xp is np else value.contiguous())

    def split(self, theta: np.ndarray) -> tuple[Any, Any]:
        """(W (D, k), b (k,)) as float32 arrays of the objective's kind."""
        flat = theta.astype(np.float32) if self.xp is np else torch.from_numpy(theta).to(self.device, torch.float32)
        return flat[: self.d * self.k].reshape(self.d, self.k), flat[self.d * self.k :]

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        weight, bias = self.split(theta)
        z = self.x @ weight + bias
        if self.multilabel:
            loss = ((1 - self.t) * z + self.lw * _softplus(-z)).sum()
            grad_z = self.lw * _sigmoid(z) - self.pt
        else:
            lse = _logsumexp_rows(z)
            loss = (self.soft * (lse - z)).sum()
            grad_z = self.xp.exp(z - lse) * self.mass - self.soft
        grad_w = (self.x.T @ grad_z) / self.n + (2 * self.penalty) * weight
        value = float(loss) / self.n + self.penalty * float((theta[: self.d * self.k] ** 2).sum())
        return value, np.concatenate([_numpy(grad_w).ravel(), _numpy(grad_z.sum(0)) / self.n])


def _logsumexp_rows(z: Any) -> Any:
    if isinstance(z, np.ndarray):
        top = z.max(1, keepdims=True)
        return top + np.log(np.exp(z - top).sum(1, keepdims=True))
    return z.logsumexp(1, keepdim=True)


def _softplus(z: Any) -> Any:
    return np.logaddexp(0.0, z) if isinstance(z, np.ndarray) else F.softplus(z)


def _sigmoid(z: Any) -> Any:
    return 0.5 * (1 + np.tanh(0.5 * z)) if isinstance(z, np.ndarray) else torch.sigmoid(z)


def _numpy(a: Any) -> np.ndarray:
    """float64 numpy, what scipy's L-BFGS-B works in."""
    return a.astype(np.float64) if isinstance(a, np.ndarray) else a.double().cpu().numpy()


@contextmanager
def _solver_on_one_thread() -> Iterator[None]:
    """scipy's own BLAS on one thread while L-BFGS-B runs: its updates are vector operations of size D x
    classes, which threads only slow down (10x on the loaded 2-core CI machine: 6 ms per step instead of
    0.5). numpy's BLAS, which does the (N, D) products, keeps its setting."""
    controller = ThreadpoolController()
    scipy_libs = [lib.filepath for lib in controller.lib_controllers if "scipy" in Path(lib.filepath).parent.name]
    if not scipy_libs:
        yield
        return
    with controller.select(filepath=scipy_libs).limit(limits=1):
        yield


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
    wrong: the path's stronger points are still exact). `converged` says whether `tol` was reached; the
    loss is computed in float32, so a tol below ~1e-6 may end on the line search instead. `init`
    warm-starts.
    """
    if not cs or any(not (c > 0) for c in cs):
        raise ConfigError(
            f"`cs` must be a non-empty list of positive inverse regularisation strengths, got {list(cs)}."
        )
    if max_iter < 1 or not tol > 0:
        raise ConfigError(f"L-BFGS needs max_iter >= 1 and tol > 0, got {max_iter} and {tol}.")
    objective = _Objective(x.float(), targets, num_classes, multilabel, class_weights, label_smoothing)
    d = x.shape[1]
    theta = np.zeros(d * num_classes + num_classes)
    if init is not None:
        theta = torch.cat([init.weight.flatten(), init.bias]).double().cpu().numpy()
    solved: dict[float, PathPoint] = {}
    options = {"maxiter": max_iter, "gtol": tol, "maxcor": _HISTORY, "maxls": _MAX_LINE_SEARCH}
    with _solver_on_one_thread():
        for c in sorted(set(float(c) for c in cs)):
            objective.penalty = 0.5 / (c * objective.n)
            fit = minimize(objective, theta, jac=True, method="L-BFGS-B", options=options)
            theta = fit.x
            weight = torch.from_numpy(theta[: d * num_classes].reshape(d, num_classes)).float().to(x.device)
            bias = torch.from_numpy(theta[d * num_classes :]).float().to(x.device)
            converged = float(np.abs(fit.jac).max()) <= tol
            solved[c] = PathPoint(c, weight, bias, int(fit.nit), converged)
    return [solved[float(c)] for c in cs]


def refit_logistic(
    x: Tensor, targets: Tensor, num_classes: int, c: float, start: PathPoint | None = None, **options: Any
) -> PathPoint:
    """One fit at a chosen C (e.g. on train+val after selection), warm-started from `start` when given."""
    return fit_logistic_path(x, targets, num_classes, (c,), init=start, **options)[0]
