"""Adapting a pretrained RGB stem to grayscale or multi-band input.

Rule: every new input channel gets the mean of the three RGB filters, scaled by 3/N. A grey image fed
to the 1-channel stem then gives exactly the features of the same grey image as RGB, and for N bands a
uniform image gives the same response as before, so pretrained weights stay meaningful.
Normalisation statistics follow the same idea: the mean of the RGB statistics for every band (users
with calibrated multi-band data should set per-band statistics from `dinotune data stats`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def adapt_stem_weight(weight: Tensor, in_chans: int) -> Tensor:
    """(out, 3, kh, kw) -> (out, in_chans, kh, kw)."""
    if weight.shape[1] == in_chans:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    return (mean * (3.0 / in_chans)).repeat(1, in_chans, 1, 1).contiguous()


def adapt_stats(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    if len(values) == in_chans:
        return values
    return (float(torch.tensor(values).mean()),) * in_chans
