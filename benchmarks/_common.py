"""Shared bits of the benchmark scripts: a sample image folder, the machine's FLOP/s, result files."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# DINOTUNE_BENCH_RESULTS: another folder (the dry run of gpu_check.sh writes there, not into results/)
RESULTS = Path(os.environ.get("DINOTUNE_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def sample_images(n: int, size: int = 300) -> Path:
    """`n` real-looking images: the elpv solar cells when installed, else scikit-learn digits upscaled."""
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="dinotune-bench-")) / "images"
    folder.mkdir(parents=True)
    try:
        from dinotune.data.bundled import elpv_imagefolder

        source = sorted(elpv_imagefolder(folder.parent / "elpv", per_class=None, size=size).rglob("*.png"))
    except Exception:
        source = []
    if source:
        for i in range(n):
            Image.open(source[i % len(source)]).save(folder / f"img{i:04d}.png")
    else:
        from sklearn.datasets import load_digits

        digits = load_digits().images
        for i in range(n):
            arr = (digits[i % len(digits)] * 16).astype(np.uint8)
            Image.fromarray(arr).resize((size, size)).convert("RGB").save(folder / f"img{i:04d}.png")
    return folder


def matmul_flops(size: int = 2048, repeats: int = 5) -> float:
    """Best observed fp32 matmul FLOP/s: a practical ceiling for this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2))
    print(f"wrote {path}")
    return path
