"""Evidence that continued pretraining learns, and that Gram anchoring keeps continuation safe.

Part 1 (learning): from a random-weight ViT, a bounded CPU run of `dinotune pretrain` on the bundled
digits images (train split only, labels unused) must raise frozen class-token kNN accuracy (k=20,
T=0.07; bank = train split, queries = test split) clearly above its starting value.

Part 2 (safety): starting from a backbone (part 1's result), short runs with Gram anchoring on and
off; we report the loss change and the mean cosine similarity between each test image's patch features
before and after. Results go to benchmarks/results/ssl_knn.json.

    python benchmarks/ssl_knn.py [--minutes 10] [--steps 300]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result

from dinotune.backbones import load_backbone
from dinotune.config import validate
from dinotune.data.bundled import digits_imagefolder
from dinotune.data.formats import load_dataset
from dinotune.data.transforms import build_transform
from dinotune.tasks.ssl_monitor import knn_accuracy
from dinotune.verbs.pretrain import PretrainConfig, run_pretrain

SIZE = 64


def settings(root: Path, out: Path, source: str, steps: int, minutes: float, **over: dict) -> dict:
    cfg = {
        "data": {"root": str(root), "subfolders": ["train"], "batch_size": 32, "num_workers": 1},
        "backbone": {"source": source},
        "crops": {
            "global_size": SIZE,
            "local_size": 32,
            "n_local": 2,
            "hflip": False,
            "global_scale": [0.4, 1.0],
            "local_scale": [0.1, 0.4],
        },
        "heads": {"out_dim": 256, "hidden_dim": 256, "bottleneck_dim": 64},
        "loss": {"koleo_weight": 0.1, "ibot_weight": 1.0, "teacher_temp_warmup": 0.2},
        "optim": {
            "lr": 2e-3,
            "min_lr_ratio": 0.005,
            "warmup": 0.1,
            "layer_decay": 1.0,
            "head_warmup": 0.0,
            "momentum_start": 0.99,
        },
        "trainer": {"max_steps": steps, "max_time_minutes": minutes, "progress_bar": False, "log_every_n_steps": 10},
        "out": str(out),
    }
    for section, values in over.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def loss_curve(run: Path, key: str) -> list[float]:
    rows = []
    for path in sorted(run.glob("logs/version_*/metrics.csv")):
        with open(path) as handle:
            rows += [float(r[key]) for r in csv.DictReader(handle) if r.get(key)]
    return rows


def mean_first_last(values: list[float], n: int = 5) -> tuple[float, float]:
    return sum(values[:n]) / min(n, len(values)), sum(values[-n:]) / min(n, len(values))


@torch.no_grad()
def patch_cosine(a_src: str, b_src: str, paths: list[Path]) -> float:
    """Mean cosine similarity of the same images' patch features under two backbones."""
    a, b = load_backbone(a_src, device="cpu"), load_backbone(b_src, device="cpu")
    tr = build_transform(
        train=False,
        image_size=SIZE,
        patch_size=16,
        resize="crop",
        augment="none",
        mean=a.info.mean,
        std=a.info.std,
        channels=3,
    )
    from dinotune.data.decode import read_image

    x = torch.stack([tr(read_image(p, 3))["image"] for p in paths])
    fa, fb = a.forward_features(x)["x_norm_patchtokens"], b.forward_features(x)["x_norm_patchtokens"]
    return float(F.cosine_similarity(fa, fb, dim=-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="random:vit_test16")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--gram-steps", type=int, default=40)
    parser.add_argument("--skip-gram", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
    work = Path(tempfile.mkdtemp(prefix="dinotune-ssl-bench-"))
    root = digits_imagefolder(work / "digits", size=SIZE)
    spec = load_dataset(root, task="classify")

    def knn(source: str) -> float:
        b = load_backbone(source, device="cpu")
        return knn_accuracy(b, spec, "train", "test", SIZE, b.info.mean, b.info.std, 3, k=20, temperature=0.07)

    before = knn(args.source)
    cfg = settings(root, work / "run1", args.source, args.steps, args.minutes)
    start = time.perf_counter()
    run1 = run_pretrain(validate(PretrainConfig, cfg))
    minutes = (time.perf_counter() - start) / 60
    after = knn(str(run1 / "backbone.pth"))
    dino = loss_curve(run1, "loss/dino")
    result = {
        "machine": machine(),
        "note": "CPU shared with other jobs: timings are noisy upper bounds",
        "learning": {
            "backbone": args.source,
            "data": f"digits {SIZE}px train split, labels unused",
            "knn": "k=20, T=0.07, class token, bank=train split, queries=test split",
            "knn_before": before,
            "knn_after": after,
            "minutes": minutes,
            "steps": int(torch.load(run1 / "checkpoints/last.ckpt", weights_only=False)["global_step"]),
            "loss_dino_first_last": mean_first_last(dino),
            "settings": cfg,
        },
    }
    print(f"kNN top-1: {before:.4f} -> {after:.4f} in {minutes:.1f} min", flush=True)
    if not args.skip_gram:
        start_src = str(run1 / "backbone.pth")
        paths = [s.path for s in spec.splits["test"]][:128]
        gram = {}
        for weight in (0.0, 1.0):
            over = {"loss": {"gram_weight": weight}, "optim": {"lr": 2e-3, "warmup": 0.0, "head_warmup": 0.0}}
            c = settings(root, work / f"gram{weight}", start_src, args.gram_steps, args.minutes, **over)
            run = run_pretrain(validate(PretrainConfig, c))
            total = loss_curve(run, "loss/dino")
            gram[f"gram_weight={weight}"] = {
                "patch_cosine_to_start": patch_cosine(start_src, str(run / "backbone.pth"), paths),
                "knn_after": knn(str(run / "backbone.pth")),
                "loss_dino_first_last": mean_first_last(total),
                "loss_gram_first_last": mean_first_last(loss_curve(run, "loss/gram")) if weight else None,
            }
            print(weight, gram[f"gram_weight={weight}"], flush=True)
        result["continuation"] = {
            "start": "part 1 result",
            "steps": args.gram_steps,
            "runs": gram,
            "note": "fresh heads, lr 1e-3 (deliberately aggressive) to make drift visible",
        }
    print(write_result("ssl_knn", result))


if __name__ == "__main__":
    main()
