"""Per-step schedules: pure functions of the optimizer step, so exact resume needs no extra state.

`cosine` and `warmup_cosine` give values (SSL schedules lr, weight decay, teacher momentum with them);
the factories below give LR multipliers for `torch.optim.lr_scheduler.LambdaLR` (fine-tuning).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dinotune.errors import ConfigError

Schedule = Callable[[int], float]


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


def _warm(step: int, warmup: int) -> float | None:
    """Warm-up multiplier (step + 1) / (warmup + 1): the first step already learns."""
    return warmup_cosine(step, warmup + 1, warmup, 1.0, 1.0, initial=1 / (warmup + 1)) if step < warmup else None


def cosine_schedule(total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> Schedule:
    """Linear warm-up to 1, then half a cosine down to `min_ratio` at `total_steps`."""

    def schedule(step: int) -> float:
        if (w := _warm(step, warmup_steps)) is not None:
            return w
        return cosine(step - warmup_steps, max(1, total_steps - warmup_steps), 1.0, min_ratio)

    return schedule


def cosine_restarts(period_steps: int, mult: float = 1.0, warmup_steps: int = 0, min_ratio: float = 0.0) -> Schedule:
    """SGDR: cosine cycles from 1 to `min_ratio`, the first `period_steps` long, each `mult` times longer."""
    if period_steps < 1:
        raise ConfigError("cosine_restarts needs a period of at least one step; raise optim.restart_period.")

    def schedule(step: int) -> float:
        if (w := _warm(step, warmup_steps)) is not None:
            return w
        t, period = step - warmup_steps, float(period_steps)
        while t >= period:
            t -= period
            period *= mult
        return cosine(t, period, 1.0, min_ratio)

    return schedule


def step_decay(step_size: int, gamma: float = 0.1, warmup_steps: int = 0) -> Schedule:
    """Warm-up, then multiply by `gamma` every `step_size` steps."""
    step_size = max(1, step_size)

    def schedule(step: int) -> float:
        if (w := _warm(step, warmup_steps)) is not None:
            return w
        return gamma ** ((step - warmup_steps) // step_size)

    return schedule


def constant(warmup_steps: int = 0) -> Schedule:
    def schedule(step: int) -> float:
        w = _warm(step, warmup_steps)
        return 1.0 if w is None else w

    return schedule
