r"""DINO class-token loss: the student predicts the teacher's (centred, sharpened) prototype distribution.

For prototype scores (logits) :math:`s, t \in \mathbb{R}^K` of the student and the EMA teacher,

    p_s = softmax(s / tau_s)                       (tau_s = 0.1, the student temperature)
    p_t = centre(t, tau_t)                         (tau_t warms up linearly, e.g. 0.04 -> 0.07)
    L   = mean over (student crop i, teacher crop j), i != j for global pairs, of
          -(1/B) sum_b sum_k p_t^j[b, k] log p_s^i[b, k]

Centering stops the teacher collapsing onto one prototype. Two options:

- ``"center"`` (DINO): p_t = softmax((t - c) / tau_t) with c an EMA of batch-mean teacher logits,
  c <- m c + (1 - m) mean_b t_b (m = 0.9, mean over every process).
- ``"sinkhorn"`` (DINOv2/v3): Q = exp(t / tau_t) over the B x K batch is alternately rescaled so that each
  prototype gets total mass 1/K and each sample 1/B (a few Sinkhorn-Knopp iterations, sums over every
  process), then scaled by B so that each sample's row is a distribution. This balances prototype use
  within the batch instead of over time.

With p_t = p_s (and tau_s = 1) the loss is the entropy of p_t; the cross-entropy is never below it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

Centering = Literal["sinkhorn", "center"]


def _all_reduce(tensor: Tensor) -> Tensor:
    """Sum over processes when running distributed; identity otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def teacher_temperature(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07) -> float:
    """Linear warm-up of the teacher temperature: a sharp (low) temperature early avoids flat targets."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temperature: float, n_iterations: int = 3) -> Tensor:
    """Teacher probabilities (B, K) with rows summing to 1 and (near-)uniform prototype marginals.

    Works in float32 and subtracts the global maximum before exponentiating (the result is
    scale-invariant, so this only prevents overflow).
    """
    scores = logits.float() / temperature
    top = scores.max().detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp(scores - top).t()  # (K, B)
    n_prototypes, batch = q.shape[0], q.shape[1] * _world_size()
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1/K
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)  # each sample: mass 1/B (columns are local)
        q /= batch
    return (q * batch).t()


def cross_entropy(teacher_probs: Tensor, student_logits: Tensor, student_temp: float) -> Tensor:
    """Per-sample -sum_k p_t log softmax(s / tau_s), over the last dimension."""
    return -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)


class DINOLoss(nn.Module):
    """DINO loss; the EMA centre is a buffer, so it is saved in (and restored from) checkpoints."""

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: Centering = "sinkhorn",
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.centering, self.sinkhorn_iterations = centering, sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: Tensor, temperature: float) -> Tensor:
        """Centred, sharpened teacher distributions; any leading shape (..., K) is treated as one batch."""
        flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])
        if self.centering == "sinkhorn":
            probs = sinkhorn_knopp(flat, temperature, self.sinkhorn_iterations)
        else:
            probs = F.softmax((flat.float() - self.center) / temperature, dim=-1)
        return probs.reshape(teacher_logits.shape)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """c <- m c + (1 - m) * batch mean over all processes (only used by `centering="center"`)."""
        flat = teacher_logits.reshape(-1, teacher_logits.shape[-1]).float()
        total = _all_reduce(flat.sum(dim=0, keepdim=True))
        count = flat.shape[0] * _world_size()
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    def forward(self, student_logits: Tensor, teacher_probs: Tensor, ignore_diagonal: bool = True) -> Tensor:
        """`student_logits` (S, B, K) and `teacher_probs` (T, B, K), crop-major.

        With `ignore_diagonal`, student crop i is not compared with teacher crop i (the same view), as
        for the global crops, which both networks see.
        """
        total, pairs = student_logits.new_zeros((), dtype=torch.float32), 0
        for i in range(student_logits.shape[0]):
            for j in range(teacher_probs.shape[0]):
                if ignore_diagonal and i == j:
                    continue
                total = total + cross_entropy(teacher_probs[j], student_logits[i], self.student_temp).mean()
                pairs += 1
        if pairs == 0:
            raise ValueError("DINO loss needs at least one (student crop, teacher crop) pair to compare.")
        return total / pairs
