r"""iBOT masked-patch loss: the student, seeing a patch replaced by the mask token, predicts the
teacher's prototype distribution for the unmasked patch.

With per-patch prototype scores s (student, masked input) and t (teacher, full input), and a boolean
mask m[b, n] (True = masked in the student's input):

    p_t = centre(t, tau_t)   (Sinkhorn-Knopp over all masked patches of the batch, or EMA patch centre)
    L   = (1/|I|) sum_{b in I} (1/M_b) sum_{n : m[b,n]} -sum_k p_t[b,n,k] log softmax(s[b,n] / tau_s)_k

where M_b = sum_n m[b, n] and I = {b : M_b > 0}: each image with masked patches counts equally,
whatever its mask ratio, and unmasked patches never contribute.

Masks are blocks drawn per image with a ratio from a configured range (see
`dinotune.data.multicrop.block_mask`); a fraction of images is left unmasked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotune.losses.dino import Centering, _all_reduce, cross_entropy, sinkhorn_knopp


class IBOTPatchLoss(nn.Module):
    """iBOT loss; the patch centre is a buffer (saved in checkpoints)."""

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
        """(M, K) teacher logits of the masked patches -> centred distributions."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, temperature, self.sinkhorn_iterations)
        return F.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        flat = teacher_logits.float()
        total = _all_reduce(flat.sum(dim=0, keepdim=True))
        count = _all_reduce(flat.new_tensor(float(flat.shape[0])))
        if count > 0:
            self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    def masked_loss(self, student_logits: Tensor, teacher_probs: Tensor, masks: Tensor) -> Tensor:
        """Loss from the (M, K) rows of the masked patches only, in `masks[masks]` order."""
        per_patch = cross_entropy(teacher_probs, student_logits, self.student_temp)  # (M,)
        counts = masks.sum(dim=1)  # (B,)
        weights = (1.0 / counts.clamp(min=1).float())[:, None].expand_as(masks)[masks]
        n_images = (counts > 0).sum()
        if n_images == 0:
            return student_logits.sum() * 0.0  # keeps the graph (and DDP) happy when nothing is masked
        return (per_patch * weights).sum() / n_images

    def forward(self, student_logits: Tensor, teacher_probs: Tensor, masks: Tensor) -> Tensor:
        """Dense form: (B, N, K) student logits and teacher probabilities, (B, N) bool masks."""
        return self.masked_loss(student_logits[masks], teacher_probs[masks], masks)
