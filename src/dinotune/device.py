"""Device and precision choices in one place: CUDA + bf16 autocast when present, plain fp32 on CPU.

bf16 on a CPU without AMX is several times slower than fp32 (measured 5x on the CI machine), so the
CPU path never autocasts.
"""

from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def default_workers() -> int:
    """DataLoader workers: leave one core for the model, use at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))
