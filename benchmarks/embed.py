"""Images/s of `dinotune embed` against a naive loop, side by side, and as a fraction of the hardware.

The naive loop is how the seed code embeds: one preprocessing call and one model call per image
(transformers' image processor needs torchvision, so its resize + normalise is done with PIL/numpy).
Run: python benchmarks/embed.py [--arch vits16 --images 128 --image-size 224]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import matmul_flops, sample_images, write_result
from PIL import Image

from dinotune import load_backbone
from dinotune.verbs.embed import EmbedConfig, run_embed

GFLOP_PER_IMAGE = {"vits16": 9.2}  # ViT-S/16 at 224 (forward pass)


def naive_embed(backbone, paths: list[Path], size: int) -> torch.Tensor:
    mean = np.array(backbone.info.mean, dtype=np.float32)
    std = np.array(backbone.info.std, dtype=np.float32)
    out = []
    with torch.no_grad():
        for path in paths:
            image = Image.open(path).convert("RGB")
            scale = size / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
            array = (np.asarray(image, dtype=np.float32) / 255 - mean) / std
            x = torch.from_numpy(array.transpose(2, 0, 1)).unsqueeze(0)
            out.append(backbone(x))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="vits16")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")

    folder = sample_images(args.images)
    paths = sorted(folder.glob("*.png"))
    backbone = load_backbone(f"random:{args.arch}", device="cpu")
    flops = matmul_flops()

    naive_embed(backbone, paths[:4], args.image_size)  # warm-up
    start = time.perf_counter()
    naive = naive_embed(backbone, paths, args.image_size)
    naive_s = time.perf_counter() - start

    cfg = EmbedConfig(
        data_dir=folder,
        out=Path(tempfile.mkdtemp()) / "e.safetensors",
        image_size=args.image_size,
        batch_size=args.batch_size,
        cache_dir=Path(tempfile.mkdtemp()),
    )
    start = time.perf_counter()
    run_embed(cfg, backbone=backbone, progress=False)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    run_embed(cfg, backbone=backbone, progress=False)
    cached_s = time.perf_counter() - start

    gflop = GFLOP_PER_IMAGE.get(args.arch)
    result = {
        "arch": args.arch,
        "images": len(paths),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": cfg.num_workers,
        "naive_images_per_s": len(paths) / naive_s,
        "dinotune_images_per_s": len(paths) / ours_s,
        "dinotune_cached_rerun_images_per_s": len(paths) / cached_s,
        "speedup_vs_naive": naive_s / ours_s,
        "matmul_fp32_gflops": flops / 1e9,
        "naive_embedding_dim": naive.shape[1],
    }
    if gflop:
        result["fraction_of_matmul_peak"] = result["dinotune_images_per_s"] * gflop * 1e9 / flops
        result["naive_fraction_of_matmul_peak"] = result["naive_images_per_s"] * gflop * 1e9 / flops
    for key, value in result.items():
        print(f"{key:40s} {value:.3f}" if isinstance(value, float) else f"{key:40s} {value}")
    write_result(f"embed_{args.arch}", result)


if __name__ == "__main__":
    main()
