"""Cache-sized chunks: on the CPU a batch runs through the backbone a few images at a time.

A ViT-S/16 at 224 px makes a 1.2 MB MLP activation per image; a batch of 32 makes 38 MB, more than the CI
machine's 32 MiB last-level cache, so every elementwise op (bias, GELU, LayerNorm, residual) and the
attention stream from memory. In chunks of 9 the same work stays in cache: ONNX Runtime ran 1.07x faster
(median of 10 pairs; 1.02-1.27x per benchmark round) and eager PyTorch 1.07-1.39x (docs/performance.md).
The chunk is the number of images whose largest activation fits in a third of the last-level cache (a
layer's input, output and weights together). It is measured with forward hooks on the first image the
extractor runs in eager anyway (`ActivationMeter`), so it adapts to the architecture and the input size
at no extra cost. On CUDA the batch runs whole: a GPU
wants large batches.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

MAX_CHUNK = 64  # beyond this, per-call overhead is already negligible
DEFAULT_CACHE_BYTES = 32 * 2**20  # when the OS does not say (not Linux)
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


def last_level_cache_bytes(caches: Path = CPU_CACHES) -> int:
    """Size of the CPU's largest cache (Linux sysfs), else `DEFAULT_CACHE_BYTES`."""
    sizes = []
    for index in caches.glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
        if number.isdigit():
            sizes.append(int(number) * units.get(unit, 1))
    return max(sizes, default=DEFAULT_CACHE_BYTES)


class ActivationMeter:
    """Context manager: while open, records the largest tensor per image that any leaf module of
    `backbone` outputs (forward hooks), so the first eager call, made anyway, also sizes the chunks."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone, self.bytes_per_image, self._handles = backbone, 0, []

    def __enter__(self) -> ActivationMeter:
        leaves = [m for m in self.backbone.modules() if not any(True for _ in m.children())]
        self._handles = [m.register_forward_hook(self._record) for m in leaves]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, _module: nn.Module, _inputs: object, output: object) -> None:
        for value in output if isinstance(output, tuple | list) else (output,):
            if isinstance(value, Tensor) and value.dim() > 1:
                per_image = value.numel() // max(value.shape[0], 1) * value.element_size()
                self.bytes_per_image = max(self.bytes_per_image, per_image)

    def chunk(self) -> int:
        """Images per call such that the largest activation fits in a third of the last-level cache."""
        return max(1, min(MAX_CHUNK, last_level_cache_bytes() // 3 // max(self.bytes_per_image, 1)))


def in_chunks(engine, images: Tensor, size: int | None) -> dict[str, Tensor]:
    """`engine(images)` computed `size` images at a time and concatenated."""
    if size is None or len(images) <= size:
        return engine(images)
    return concat([engine(chunk) for chunk in images.split(size)])


def concat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Features of consecutive image groups as one batch."""
    return {kind: torch.cat([part[kind] for part in parts]) for kind in parts[0]}
