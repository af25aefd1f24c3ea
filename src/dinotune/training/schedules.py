"""Per-step schedules (pure functions of the optimizer step, so exact resume needs no extra state)."""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine from `start` (step 0) to `end` (step `total` and after)."""
    if total <= 0 or step >= total:
        return end
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / total))


def warmup_cosine(step: int, total: int, warmup: int, peak: float, final: float, initial: float = 0.0) -> float:
    """Linear warm-up from `initial` to `peak` over `warmup` steps, then cosine to `final` at `total`."""
    if step < warmup:
        return initial + (peak - initial) * step / warmup
    return cosine(step - warmup, total - warmup, peak, final)
