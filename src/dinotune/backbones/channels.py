"""Adapting a pretrained RGB stem to grayscale or multi-band input (timm's `adapt_input_conv` rule).

- 1 channel: the sum of the three RGB filters, so a grey image through the 1-channel stem gives exactly
  the features of the same grey image fed as RGB.
- N > 1 channels: the RGB filters repeated cyclically over the bands (band i gets filter i mod 3) and
  scaled by 3/N. RGB input through a 3-channel stem is untouched, and the bands stay distinguishable:
  swapping two bands that got different filters changes the features, so a frozen backbone (probe,
  kNN, embed, SSL) still sees which band holds what. Bands i and i + 3 share a filter; fine-tuning
  (or `data.channels` order) is what tells those apart.
Normalisation statistics follow the same rule: the RGB mean/std for one channel, cycled for N bands
(users with calibrated multi-band data should set per-band statistics from `dinotune data stats`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def adapt_stem_weight(weight: Tensor, in_chans: int) -> Tensor:
    """(out, 3, kh, kw) -> (out, in_chans, kh, kw)."""
    rgb = weight.shape[1]
    if rgb == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // rgb)
    return (weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (rgb / in_chans)).contiguous()


def adapt_stats(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (float(torch.tensor(values).mean()),)
    return tuple(float(values[i % len(values)]) for i in range(in_chans))
