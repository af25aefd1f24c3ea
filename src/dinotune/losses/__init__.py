"""Self-supervised losses of DINOv3 continued pretraining, one per module, each stating its math.

- `dino`: cross-entropy between teacher and student class-token prototype scores (DINO), with
  Sinkhorn-Knopp or EMA-centre centering of the teacher and a teacher-temperature warm-up.
- `ibot`: the same cross-entropy on masked patch tokens only (iBOT).
- `koleo`: Kozachenko-Leonenko entropy regulariser spreading features over the sphere.
- `gram`: Gram anchoring of patch-feature similarities to a frozen reference backbone.
"""

from dinotune.losses.dino import DINOLoss, sinkhorn_knopp, teacher_temperature
from dinotune.losses.gram import gram_loss
from dinotune.losses.ibot import IBOTPatchLoss
from dinotune.losses.koleo import koleo_loss

__all__ = ["DINOLoss", "IBOTPatchLoss", "gram_loss", "koleo_loss", "sinkhorn_knopp", "teacher_temperature"]
