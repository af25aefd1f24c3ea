r"""Gram anchoring: keep the pairwise similarity structure of patch features close to a reference.

For each image b with N patch features X_b (N x D) from the student and R_b from a frozen copy of the
starting backbone, both L2-normalised per patch,

    G_b = \hat X_b \hat X_b^T,    H_b = \hat R_b \hat R_b^T      (N x N cosine similarities)
    L   = (1/B) sum_b (1/N^2) || G_b - H_b ||_F^2

i.e. the mean squared difference of the Gram matrices. It constrains relations between patches, not
the features themselves, so the global representation may still move (DINOv3 uses it to stop dense
features degrading in long runs). With `remove_negatives`, negative similarities in both matrices are
clipped to 0 first, so only positive relations are anchored.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def gram_loss(student_patches: Tensor, reference_patches: Tensor, remove_negatives: bool = False) -> Tensor:
    """(B, N, D) student and (B, N, D') reference patch features -> scalar loss (0 when identical)."""
    if student_patches.shape[:2] != reference_patches.shape[:2]:
        raise ValueError(
            f"Gram loss needs the same (batch, patches) for both inputs; got {tuple(student_patches.shape)} "
            f"and {tuple(reference_patches.shape)}."
        )
    x = F.normalize(student_patches.float(), dim=-1)
    r = F.normalize(reference_patches.float().detach(), dim=-1)
    g, h = x @ x.transpose(1, 2), r @ r.transpose(1, 2)
    if remove_negatives:
        g, h = g.clamp(min=0), h.clamp(min=0)
    return (g - h).pow(2).mean()
