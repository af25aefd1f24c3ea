"""Knowledge distillation loss (Hinton et al. 2015) for a small student and a trained teacher.

loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
The T^2 factor keeps the soft term's gradient scale independent of the temperature, so `alpha` means the
same at every T. Multi-label heads use per-label Bernoulli KL and BCE instead of softmax KL and CE.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from dinotune.config import StrictModel


class DistillConfig(StrictModel):
    """The `distill:` section: used when `mode: distill`."""

    teacher: Path | None = Field(None, description="Run or model folder of the trained teacher (load_model).")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the label loss; 1 - alpha weighs the teacher.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of both models in the KL term.")


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float, multilabel: bool = False) -> Tensor:
    """T^2 * KL(teacher/T || student/T), averaged over the batch (and labels when multi-label)."""
    t = temperature
    s, k = student_logits.float() / t, teacher_logits.detach().float() / t
    if multilabel:
        p = torch.sigmoid(k)
        kl = F.binary_cross_entropy_with_logits(s, p) - F.binary_cross_entropy_with_logits(k, p)
    else:
        kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(k, dim=-1), log_target=True, reduction="batchmean")
    return kl * t * t


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    hard_loss: Tensor,
    alpha: float,
    temperature: float,
    multilabel: bool = False,
) -> Tensor:
    """alpha * `hard_loss` (the task loss on labels, computed by the caller) + (1 - alpha) * soft KL."""
    return alpha * hard_loss + (1 - alpha) * soft_kl(student_logits, teacher_logits, temperature, multilabel)
