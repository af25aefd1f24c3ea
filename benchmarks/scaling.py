"""Extraction memory and time against the number of images: both should grow linearly (or memory stay flat).

For each size N, a fresh subprocess extracts the features of N small random-pixel PNGs (`--image-size`,
default 32 px) through `FeatureCache.get` (automatic engine; the ONNX graph is exported once by a
300-image warm-up and shared) with a tiny random-weight ViT (the cache's shards are written
as it goes and read back one at a time, so nothing but the N x D result is ever in RAM), and reports its
peak RSS (`resource.getrusage`, the whole process) and seconds per image. The images are written once,
before any timing. Run: python benchmarks/scaling.py [--sizes 1000 10000 100000 --arch vit_test16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import write_result


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    existing = sorted(folder.glob("*.png"))
    for i in range(len(existing), n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return sorted(folder.glob("*.png"))[:n]


def one(folder: str, n: int, size: int, arch: str, engines: str) -> None:
    """Child: extract n images, print a JSON line with seconds and peak RSS."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    from dinotune import load_backbone
    from dinotune.verbs.embed import make_cache

    paths = sorted(Path(folder).glob("*.png"))[:n]
    backbone = load_backbone(f"random:{arch}", device="cpu")
    root = Path(tempfile.mkdtemp())
    (root / "engines").symlink_to(engines)  # the exported graph is shared: its one-off cost is not per image
    cache = make_cache(backbone, size, cache_dir=root)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = cache.get(paths, batch_size=256, num_workers=1, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shards = len(list(cache.dir.glob("shard-*.safetensors")))
    print(json.dumps({"images": n, "seconds": seconds, "seconds_per_image": seconds / n, "peak_rss_mb": peak / 1024,
                      "rss_before_extraction_mb": before / 1024, "shards": shards,
                      "features_mb": sum(v.numel() * 4 for v in result.features.values()) / 1e6,
                      "engine": cache.last_engine}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--arch", default="vit_test16")
    parser.add_argument("--folder", help="reuse (and extend) this folder of generated images")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], int(args.one[1]), args.image_size, args.arch, args.one[2])
        return
    folder = Path(args.folder or tempfile.mkdtemp(prefix="dinotune-scaling-"))
    make_images(folder, max(args.sizes), args.image_size)
    engines = Path(tempfile.mkdtemp(prefix="dinotune-engines-"))
    rows = []
    for n in [300, *sorted(args.sizes)]:  # 300: a warm-up that exports the graph (not reported)
        cmd = [sys.executable, __file__, "--one", str(folder), str(n), str(engines),
               "--image-size", str(args.image_size), "--arch", args.arch]  # fmt: skip
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    rows = rows[1:]
    base = rows[0]
    for row in rows:
        row["time_per_image_vs_smallest"] = row["seconds_per_image"] / base["seconds_per_image"]
        row["extra_rss_mb_vs_smallest"] = row["peak_rss_mb"] - base["peak_rss_mb"]
    write_result("scaling", {"arch": args.arch, "image_size": args.image_size, "rows": rows})


if __name__ == "__main__":
    main()
