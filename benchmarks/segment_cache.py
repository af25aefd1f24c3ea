"""Frozen (linear) segmentation: the cost of one training epoch with and without the dense feature cache.

The same model (frozen random-weight backbone + linear head on the last 4 blocks), the same data
(synthetic digit masks at `--image-size`, augment=none with horizontal flip, i.e. two stored views),
the same loss and AdamW step, timed side by side in one process: without the cache every step runs the
backbone on the batch (what `dinotune train task=segment mode=linear` did before); with it, the step
reads memory-mapped maps and runs only the head. Epochs are repeated; the one-off cache build is
reported too (it costs about two uncached epochs: both views are extracted).
Run: python benchmarks/segment_cache.py [--arch vits16 --images 48 --image-size 224 --epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _common import write_result
from torch.utils.data import DataLoader

from dinotune import load_backbone
from dinotune.data.bundled import make_segmentation_dataset
from dinotune.data.datasets import SegmentationDataset
from dinotune.data.formats import load_dataset
from dinotune.data.transforms import build_transform
from dinotune.features.dense import DenseFeatureCache
from dinotune.heads.segment import HeadConfig
from dinotune.losses.segmentation import SegmentationLoss
from dinotune.model import build_segmenter


def epoch(model, loader, cached: bool) -> float:
    """Seconds of one training epoch of the head."""
    loss_fn = SegmentationLoss(None, None, 255)
    optim = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    start = time.perf_counter()
    for batch in loader:
        masks = batch["mask"].long()
        logits = model.forward_maps(batch["maps"], masks.shape[-2:]) if cached else model(batch["image"])
        loss = loss_fn(logits, masks)
        optim.zero_grad()
        loss.backward()
        optim.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="vits16")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    root = make_segmentation_dataset(Path(tempfile.mkdtemp()) / "seg", int(args.images / 0.8), size=args.image_size)
    backbone = load_backbone(f"random:{args.arch}", device="cpu").eval()
    spec = load_dataset(root, "segment")
    mean, std = backbone.info.mean, backbone.info.std
    flip = build_transform(train=True, image_size=args.image_size, augment="none", hflip=True, mean=mean, std=std)
    fixed = build_transform(train=False, image_size=args.image_size, mean=mean, std=std)
    train = SegmentationDataset(spec.splits["train"], flip, colours=spec.colours)
    model = build_segmenter(backbone, HeadConfig(type="linear", layers="last4"), 11)
    model.backbone.requires_grad_(False)

    source = SegmentationDataset(spec.splits["train"], fixed, colours=spec.colours)
    cache = DenseFeatureCache(Path(tempfile.mkdtemp()), backbone, model.layers, {"benchmark": 1}, views=2)
    start = time.perf_counter()
    cached_set, _ = cache.dataset(source, batch_size=args.batch_size)
    build_s = time.perf_counter() - start

    plain = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    fast = DataLoader(cached_set, batch_size=args.batch_size, shuffle=True)
    without, with_cache = [], []
    for index in range(args.epochs):  # interleaved, so both see the same machine load
        without.append(epoch(model, plain, cached=False))
        with_cache.append(epoch(model, fast, cached=True))
        print(f"epoch {index + 1}: without cache {without[-1]:.2f} s, with cache {with_cache[-1]:.3f} s", flush=True)
    ratios = [a / b for a, b in zip(without, with_cache, strict=True)]
    disk = sum(p.stat().st_size for p in cache.dir.glob("*.npy"))
    result = {
        "arch": args.arch,
        "images": len(train),
        "image_size": args.image_size,
        "layers": model.layers,
        "views": 2,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "epoch_seconds_without_cache": without,
        "epoch_seconds_with_cache": with_cache,
        "speedup_per_epoch": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "cache_build_seconds": build_s,
        "cache_disk_mb": disk / 1e6,
    }
    print({k: v for k, v in result.items() if k not in ("epoch_seconds_without_cache", "epoch_seconds_with_cache")})
    write_result("segment_cache", result)


if __name__ == "__main__":
    main()
