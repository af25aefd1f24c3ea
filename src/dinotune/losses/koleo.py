r"""KoLeo regulariser: the Kozachenko-Leonenko differential-entropy estimator of the batch features.

For features x_1..x_B, L2-normalised to \hat x_i, with nearest-neighbour distance
d_i = min_{j != i} || \hat x_i - \hat x_j ||_2,

    L = -(1/B) sum_i log(d_i + eps)

Minimising L pushes every feature away from its nearest neighbour, spreading the batch uniformly over
the sphere (DINOv2/v3 apply it to the student's global-crop class tokens, per crop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """(B, D) features -> scalar loss; B must be at least 2."""
    if features.shape[0] < 2:
        raise ValueError("KoLeo needs at least 2 samples per batch.")
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.t()
        sims.fill_diagonal_(-2.0)  # below any cosine, so a sample is never its own neighbour
        nearest = sims.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()
